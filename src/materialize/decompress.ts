import { pipeline, Readable } from 'node:stream'
import { createGunzip } from 'node:zlib'
import { Decompress } from 'fzstd'
import { UnsafeLayerError } from '../errors.ts'
import { ZstdFrameGuard } from './zstd-frames.ts'

/** How a layer's bytes are compressed, told by their first bytes. */
export type LayerCompression = 'gzip' | 'zstd' | 'none'

const GZIP_MAGIC = [0x1f, 0x8b]
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd]

/**
 * The compression of a stream from its first bytes. The magic bytes decide, not the media
 * type: registries and tools mislabel layers (a `tar+gzip` type on a plain tar, a Docker type
 * on zstd), and the bytes cannot lie about themselves.
 */
export function detectCompression(head: Uint8Array): LayerCompression {
  const starts = (magic: number[]) => magic.every((b, i) => head[i] === b)
  if (starts(GZIP_MAGIC)) return 'gzip'
  if (starts(ZSTD_MAGIC)) return 'zstd'
  return 'none'
}

/**
 * The uncompressed bytes of a layer blob (gzip, zstd or a plain tar). A corrupt compressed
 * stream fails with `UnsafeLayerError`; an error of the source itself passes through as is.
 */
export async function* decompressLayer(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  const it = source[Symbol.asyncIterator]()
  const head: Uint8Array[] = []
  let held = 0
  let ended = false
  try {
    while (held < ZSTD_MAGIC.length) {
      const r = await it.next()
      if (r.done) {
        ended = true
        break
      }
      head.push(r.value)
      held += r.value.byteLength
    }
    const first = Buffer.concat(head)
    // The source again, whole: the bytes read to detect, then the rest.
    const whole = (async function* () {
      if (first.byteLength > 0) yield first
      if (ended) return
      for (let r = await it.next(); !r.done; r = await it.next()) yield r.value
    })()
    switch (detectCompression(first)) {
      case 'gzip':
        yield* gunzip(whole)
        break
      case 'zstd':
        yield* unzstd(whole)
        break
      case 'none':
        yield* whole
        break
    }
  } finally {
    // Stops the source (closes the store's file) when the consumer stops early or fails.
    await it.return?.()
  }
}

async function* gunzip(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  let sourceFailed: unknown
  const input = Readable.from(
    (async function* () {
      try {
        yield* source
      } catch (err) {
        sourceFailed = err
        throw err
      }
    })()
  )
  // pipeline destroys every stream when one fails, so a failing source ends the iteration.
  const out = pipeline(input, createGunzip(), () => {})
  try {
    for await (const chunk of out) yield chunk as Buffer
  } catch (err) {
    if (sourceFailed !== undefined) throw sourceFailed
    throw new UnsafeLayerError(`corrupt gzip stream: ${(err as Error).message}`, { cause: err })
  } finally {
    out.destroy()
  }
}

async function* unzstd(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  const out: Uint8Array[] = []
  // fzstd hands out views of its window buffer, which it reuses: keep copies.
  const zstd = new Decompress((data) => {
    out.push(data.slice())
  })
  // Frame headers are checked before the decoder reads them: it allocates what they ask for.
  const guard = new ZstdFrameGuard()
  const push = (chunk: Uint8Array, final: boolean) => {
    guard.push(chunk)
    try {
      zstd.push(chunk, final)
    } catch (err) {
      throw new UnsafeLayerError(`corrupt zstd stream: ${(err as Error).message}`, { cause: err })
    }
  }
  for await (const chunk of source) {
    push(chunk, false)
    yield* out.splice(0)
  }
  push(new Uint8Array(0), true)
  yield* out.splice(0)
}
