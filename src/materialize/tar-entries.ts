import { type Extract, extract, type Header } from 'tar-stream'
import { UnsafeLayerError } from '../errors.ts'

/**
 * A tar header as tar-stream decodes it. Its own typings promise more than it checks: `type` is
 * null for an unknown type flag, `linkname` null when empty, numbers NaN when a field is not
 * octal; `pax` holds the PAX records that applied to the entry.
 */
export interface TarHeader extends Omit<Header, 'type' | 'linkname' | 'pax'> {
  type: Header['type'] | null
  linkname: string | null
  pax?: Record<string, string> | null
  /** Offset of the entry's data in the tar stream. */
  byteOffset?: number
}

const BLOCK = 512

/** One entry: its header and its data, which must be read (or drained) before the next. */
export interface TarEntry {
  header: TarHeader
  body: AsyncIterable<Uint8Array>
}

/**
 * The entries of an uncompressed tar stream. tar-stream does the parsing (ustar, GNU long
 * names, PAX); what it refuses (a bad checksum, an unknown format, a negative or unparsable
 * size, data that ends inside an entry) becomes `UnsafeLayerError`. An error of `bytes` itself
 * (the store, the decompressor) passes through unchanged.
 */
export async function* readTar(bytes: AsyncIterable<Uint8Array>): AsyncGenerator<TarEntry> {
  const ex = extract()
  let sourceError: { err: unknown } | undefined
  /** Length of the real stream, once it has ended. */
  let realEnd: number | undefined
  // Feeds the parser, with backpressure, while the caller consumes entries.
  const feeding = (async () => {
    try {
      let fed = 0
      for await (const chunk of bytes) {
        if (ex.destroyed) return
        fed += chunk.byteLength
        if (!ex.write(chunk)) await drained(ex)
      }
      if (ex.destroyed) return
      // umoci (0.4.7) ends some layers right after the last entry's data, with neither its
      // padding nor the end-of-archive blocks; Go's reader, and so containerd, accept that.
      // The missing padding is supplied here; an entry whose *data* it would complete is
      // refused below, so a truncated entry is never filled with zeros.
      realEnd = fed
      if (fed % BLOCK !== 0) ex.write(new Uint8Array(BLOCK - (fed % BLOCK)))
      ex.end(null)
    } catch (err) {
      sourceError = { err }
      ex.destroy(err as Error)
    }
  })()
  // What the parser throws is the archive's fault; what the source throws passes through.
  const failure = (err: unknown) =>
    sourceError
      ? sourceError.err
      : new UnsafeLayerError(`malformed tar: ${(err as Error).message}`, { cause: err })
  async function* body(header: TarHeader, entry: AsyncIterable<unknown>): AsyncGenerator<Uint8Array> {
    try {
      for await (const chunk of entry) yield chunk as Uint8Array
    } catch (err) {
      // A stream cut inside an entry destroys the entry's stream: the parser's error is there.
      throw failure(err)
    }
    const end = (header.byteOffset ?? 0) + (header.size ?? 0)
    if (realEnd !== undefined && end > realEnd) {
      throw new UnsafeLayerError(`malformed tar: the data of ${JSON.stringify(header.name)} is cut short`)
    }
  }
  try {
    for await (const entry of ex) {
      const header = entry.header as unknown as TarHeader
      yield { header, body: body(header, entry) }
    }
  } catch (err) {
    throw err instanceof UnsafeLayerError ? err : failure(err)
  } finally {
    if (!ex.destroyed) ex.destroy(null)
    await feeding
  }
  if (sourceError) throw sourceError.err
}

/** Resolves once the parser wants more bytes, or is gone. */
function drained(ex: Extract): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      ex.off('drain', done)
      ex.off('close', done)
      resolve()
    }
    ex.on('drain', done)
    ex.on('close', done)
  })
}
