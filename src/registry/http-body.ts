import type { Dispatcher } from 'undici'
import { UpstreamProtocolError } from '../errors.ts'

/** An undici response. */
export type Response = Dispatcher.ResponseData

/** Reads a body of at most `cap` bytes; a longer one is an error. */
export async function readCapped(res: Response, cap: number, where: () => string): Promise<Uint8Array> {
  const chunks: Buffer[] = []
  let total = 0
  for await (const chunk of res.body as AsyncIterable<Buffer>) {
    total += chunk.length
    if (total > cap) {
      res.body.destroy()
      throw new UpstreamProtocolError(`${where()}: body larger than ${cap} bytes`)
    }
    chunks.push(chunk)
  }
  return new Uint8Array(Buffer.concat(chunks, total))
}
