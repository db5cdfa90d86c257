import type { DrainResult } from '../api/daemon-routes.ts'
import { callAgent } from './socket-client.ts'

/**
 * `shoal drain [--timeout <duration>]`: the agent stops advertising and sends new peers
 * elsewhere, then waits for its uploads in flight; it keeps running (a restart undoes it).
 */
export async function drainCommand(options: {
  socket: string
  timeout?: string
  json?: boolean
  out?: NodeJS.WritableStream
}): Promise<DrainResult> {
  const out = options.out ?? process.stdout
  const body = options.timeout === undefined ? {} : { timeout: options.timeout }
  const r = await callAgent<DrainResult>(options.socket, 'POST', '/v1/drain', body)
  if (options.json) out.write(`${JSON.stringify(r, null, 2)}\n`)
  else {
    const left = r.uploadsLeft === 0 ? 'every upload finished' : `${r.uploadsLeft} uploads still running`
    out.write(`drained: ${r.withdrawn} blobs withdrawn, ${left} after ${(r.waitedMs / 1000).toFixed(1)} s\n`)
  }
  return r
}
