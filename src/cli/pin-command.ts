import type { Pin } from '../fetch/image-pins.ts'
import { formatBytes } from './format.ts'
import { callAgent } from './socket-client.ts'

/**
 * `shoal pin <reference|digest>` and `shoal unpin <reference|digest>`: pins an image (pulled
 * first) or a blob the store holds, so the quota never evicts it; unpin drops that pin (blobs
 * other pins hold stay pinned).
 */
export async function pinCommand(
  action: 'pin' | 'unpin',
  target: string,
  options: { socket: string; json?: boolean; out?: NodeJS.WritableStream }
): Promise<Pin> {
  const out = options.out ?? process.stdout
  const r = await callAgent<Pin>(options.socket, 'POST', `/v1/${action}`, { target })
  if (options.json) out.write(`${JSON.stringify(r, null, 2)}\n`)
  else {
    const n = r.digests.length
    const what = `${n} blob${n === 1 ? '' : 's'}, ${formatBytes(r.bytes)}`
    out.write(`${action === 'pin' ? 'pinned' : 'unpinned'} ${r.name}: ${what}\n`)
  }
  return r
}
