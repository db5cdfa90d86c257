import type { EvictResult } from '../interface/store.ts'
import { formatBytes, shortDigest } from './format.ts'
import { callAgent } from './socket-client.ts'

/**
 * `shoal gc [--target <size>]`: evicts complete blobs that are neither pinned nor in use, least
 * recently used first, down to the target (everything evictable without one); prints what
 * it freed.
 */
export async function gcCommand(options: {
  socket: string
  target?: string
  json?: boolean
  out?: NodeJS.WritableStream
}): Promise<EvictResult> {
  const out = options.out ?? process.stdout
  const body = options.target === undefined ? {} : { target: options.target }
  const r = await callAgent<EvictResult>(options.socket, 'POST', '/v1/gc', body)
  if (options.json) {
    out.write(`${JSON.stringify(r, null, 2)}\n`)
    return r
  }
  const n = r.evicted.length
  out.write(`freed ${formatBytes(r.freedBytes)} in ${n} blob${n === 1 ? '' : 's'}\n`)
  for (const e of r.evicted) out.write(`  ${shortDigest(e.digest)}  ${formatBytes(e.size)}\n`)
  const u = r.usage
  out.write(`store: ${formatBytes(u.usedBytes)} of ${formatBytes(u.quotaBytes)} in ${u.blobs} blobs\n`)
  return r
}
