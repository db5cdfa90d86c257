import { isLayerTarget } from './materialize-command.ts'
import { callAgent } from './socket-client.ts'

/** What `POST /v1/release` answers. */
export interface ReleaseResult {
  reference?: string
  layer?: string
  manifestDigest?: string
  /** References still held on it. */
  refs: number
}

/**
 * `shoal release <image|sha256:layer>`: gives back the references one `shoal materialize` of it
 * took. The layers stay on disk until `shoal prune`.
 */
export async function releaseCommand(
  target: string,
  options: { socket: string; json?: boolean; out?: NodeJS.WritableStream }
): Promise<ReleaseResult> {
  const out = options.out ?? process.stdout
  const body = isLayerTarget(target) ? { layer: target } : { reference: target }
  const r = await callAgent<ReleaseResult>(options.socket, 'POST', '/v1/release', body)
  if (options.json) out.write(`${JSON.stringify(r, null, 2)}\n`)
  else {
    const left = r.refs === 0 ? 'no references left (shoal prune removes its layers)' : `${r.refs} left`
    out.write(`released ${r.reference ?? r.layer}: ${left}\n`)
  }
  return r
}
