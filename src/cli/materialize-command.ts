import type { HeldMaterialization, MaterializeEvent } from '../api/materialize-routes.ts'
import type { MountSpec } from '../interface/materializer.ts'
import { formatBytes, shortDigest } from './format.ts'
import { AgentRequestError, streamAgent } from './socket-client.ts'

export interface MaterializeCommandOptions {
  socket: string
  /** Platform to pick from an index (images only). */
  platform?: string
  /** `<registry>/<repository>` to fetch a layer from when the store does not hold it. */
  ref?: string
  /** Print only the final result as JSON. */
  json?: boolean
  out?: NodeJS.WritableStream
}

/** A layer is named by its digest (`sha256:<hex>`); anything else is an image reference. */
export function isLayerTarget(target: string): boolean {
  return /^sha\d+:/.test(target)
}

/**
 * `shoal materialize <image|sha256:layer>`: asks the agent to pull the image (or take the layer)
 * and lay it out for mounting, prints a line per blob pulled and per layer ready, then the
 * mount spec. Returns the final event.
 */
export async function materializeCommand(
  target: string,
  options: MaterializeCommandOptions
): Promise<HeldMaterialization> {
  const out = options.out ?? process.stdout
  const say = (line: string) => {
    if (!options.json) out.write(`${line}\n`)
  }
  const body = isLayerTarget(target)
    ? { layer: target, ref: options.ref }
    : { reference: target, platform: options.platform }
  const kinds = new Map<string, string>()
  let done: HeldMaterialization | undefined
  for await (const e of streamAgent<MaterializeEvent>(options.socket, '/v1/materialize', body)) {
    switch (e.type) {
      case 'resolved':
        say(`${target}: ${e.manifestDigest}${e.platform ? ` (${e.platform})` : ''}, ${e.blobs.length} blobs`)
        for (const b of e.blobs) kinds.set(b.digest, b.kind === 'config' ? 'config' : 'layer ')
        break
      case 'blob-done':
        say(
          ` ${kinds.get(e.digest) ?? 'blob  '} ${shortDigest(e.digest)} ${formatBytes(e.size)} in the store`
        )
        break
      case 'pulled':
        say(`pulled in ${(e.durationMs / 1000).toFixed(2)} s`)
        break
      case 'layer':
        say(` layer  ${shortDigest(e.digest)} ready (${e.done}/${e.total})`)
        break
      case 'done': {
        const { type: _, ...held } = e
        done = held
        break
      }
      case 'error':
        throw new AgentRequestError(e.code, e.message)
    }
  }
  if (!done) throw new AgentRequestError('INTERNAL', 'the agent ended the materialize without a result')
  if (options.json) {
    out.write(`${JSON.stringify(done, null, 2)}\n`)
    return done
  }
  const refs = `${done.refs} reference${done.refs === 1 ? '' : 's'}`
  say(`materialized ${done.reference ?? done.layer} with ${done.materialization.driver} (${refs}):`)
  say(`  ${formatMount(done.materialization.mount)}`)
  return done
}

/** The mount spec as the options a `mount` command takes. */
export function formatMount(mount: MountSpec): string {
  return mount.type === 'overlay'
    ? `overlay lowerdir=${mount.lowerdirs.join(':')}`
    : `${mount.fstype} ${mount.device} (read-only${mount.options ? `, -o ${mount.options.join(',')}` : ''})`
}
