import cliProgress from 'cli-progress'
import type { ByteOrigin, PullEvent } from '../fetch/image-puller.ts'
import { formatBytes, shortDigest } from './format.ts'
import { AgentRequestError, streamAgent } from './socket-client.ts'

export interface PullCommandOptions {
  socket: string
  platform?: string
  /** Bars on a terminal; plain lines otherwise (or when false). */
  tty?: boolean
  out?: NodeJS.WriteStream
}

const ORIGIN_LABEL: Record<ByteOrigin, string> = {
  local: 'already in the local store',
  registry: 'from the seed registry',
  'oci-layout': 'from the seed OCI layout',
  peer: 'from peers'
}

/**
 * `shoal pull <ref>`: asks the agent to pull, draws one live bar per layer, and ends by saying
 * where every byte came from. Returns the final event.
 */
export async function pullCommand(
  reference: string,
  options: PullCommandOptions
): Promise<PullEvent & { type: 'done' }> {
  const out = options.out ?? process.stdout
  const tty = options.tty ?? Boolean(out.isTTY)
  const bars = tty
    ? new cliProgress.MultiBar(
        {
          format: ' {kind} {digest} [{bar}] {percentage}% {held}/{total}',
          barsize: 30,
          hideCursor: true,
          clearOnComplete: false,
          stream: out
        },
        cliProgress.Presets.shades_classic
      )
    : undefined
  const byDigest = new Map<string, cliProgress.SingleBar>()
  const kinds = new Map<string, string>()
  let done: (PullEvent & { type: 'done' }) | undefined
  try {
    for await (const e of streamAgent<PullEvent | { type: 'error'; code: string; message: string }>(
      options.socket,
      '/v1/pull',
      { reference, platform: options.platform }
    )) {
      switch (e.type) {
        case 'resolved':
          out.write(
            `${reference}: ${e.manifestDigest}${e.platform ? ` (${e.platform})` : ''}, ${e.blobs.length} blobs, ${formatBytes(e.blobs.reduce((n, b) => n + b.size, 0))}\n`
          )
          for (const b of e.blobs) {
            kinds.set(b.digest, b.kind === 'config' ? 'config' : 'layer ')
            const bar = bars?.create(b.size, 0, {
              kind: kinds.get(b.digest),
              digest: shortDigest(b.digest),
              held: formatBytes(0),
              total: formatBytes(b.size)
            })
            if (bar) byDigest.set(b.digest, bar)
          }
          break
        case 'progress':
          byDigest.get(e.digest)?.update(e.bytesHeld, { held: formatBytes(e.bytesHeld) })
          break
        case 'blob-done': {
          const bar = byDigest.get(e.digest)
          if (bar) bar.update(e.size, { held: formatBytes(e.size) })
          else
            out.write(
              ` ${kinds.get(e.digest) ?? 'blob  '} ${shortDigest(e.digest)} ${formatBytes(e.size)} done\n`
            )
          break
        }
        case 'done':
          done = e
          break
        case 'error':
          throw new AgentRequestError(e.code, e.message)
      }
    }
  } finally {
    bars?.stop()
  }
  if (!done) throw new AgentRequestError('INTERNAL', 'the agent ended the pull without a result')
  out.write(
    `pulled ${reference} in ${(done.durationMs / 1000).toFixed(2)} s, ${formatBytes(done.totalBytes)}:\n`
  )
  for (const [origin, n] of Object.entries(done.bytes) as [ByteOrigin, number][]) {
    out.write(`  ${formatBytes(n).padStart(10)}  ${ORIGIN_LABEL[origin]}\n`)
  }
  return done
}
