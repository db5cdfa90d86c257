import { InvalidHyperlayerError } from '../errors.ts'
import { ByteReader } from './byte-reader.ts'

/**
 * Media type of a hyperlayer blob: a block-level layer, the blocks that differ between a thin
 * volume and its parent (docs/hyperlayer.md).
 */
export const HYPERLAYER_MEDIA_TYPE = 'application/vnd.shoal.hyperlayer.v1'
/** The first 8 bytes of every hyperlayer. */
export const HYPERLAYER_MAGIC = 'SHOALHYP'
/** The format version this code writes and reads. */
export const HYPERLAYER_VERSION = 1
/** Bytes of the fixed header. */
export const HEADER_SIZE = 96
/** Bytes of one extent in the table. */
export const EXTENT_SIZE = 16
/** Most extents a table may hold: 64 MiB of table, kept in memory while the patch is checked. */
export const MAX_EXTENTS = 4 * 1024 * 1024
/** Smallest and largest block: a sector, and LVM's largest thin pool chunk. */
export const MIN_BLOCK_SIZE = 512
export const MAX_BLOCK_SIZE = 1024 * 1024 * 1024
/** Largest volume a hyperlayer may describe (1 PiB): keeps every offset an exact JS number. */
export const MAX_VOLUME_SIZE = 2 ** 50

/** File systems the header can name (0: none said). */
const FSTYPES = [undefined, 'ext4', 'xfs'] as const
export type HyperlayerFileSystem = 'ext4' | 'xfs'

/** What the fixed header says. */
export interface HyperlayerHeader {
  /** Bytes per block: every extent starts and ends on a block boundary (the last may be cut). */
  blockSize: number
  /** Bytes of the volume the patch makes; the parent has this size too. */
  volumeSize: number
  extentCount: number
  /** Bytes of extent data that follow the table (the sum of the data extents' lengths). */
  dataBytes: number
  /** File system on the volume, when the maker said (a root patch must, to be mounted). */
  fstype?: HyperlayerFileSystem
  /**
   * Hex block identity of the volume the patch applies on (see `blockIdentity`); undefined for
   * a root patch, which applies on a new, empty (all-zero) volume.
   */
  parent?: string
}

/** A run of blocks that differ: `data` carries the child's bytes, `zero` has none (all zeros). */
export interface HyperlayerExtent {
  /** First block. */
  block: number
  /** Blocks in the run (at least 1). */
  count: number
  kind: 'data' | 'zero'
}

/** Byte offset and length of an extent in the volume (the last block may be cut short). */
export function extentRange(
  header: HyperlayerHeader,
  e: HyperlayerExtent
): { offset: number; length: number } {
  const offset = e.block * header.blockSize
  const end = Math.min((e.block + e.count) * header.blockSize, header.volumeSize)
  return { offset, length: end - offset }
}

/** Encodes the fixed header; throws `InvalidHyperlayerError` for values it cannot hold. */
export function encodeHeader(header: HyperlayerHeader): Uint8Array {
  checkHeader(header)
  const buf = Buffer.alloc(HEADER_SIZE)
  buf.write(HYPERLAYER_MAGIC, 0, 'latin1')
  buf.writeUInt16BE(HYPERLAYER_VERSION, 8)
  buf.writeUInt16BE(0, 10) // flags: none defined
  buf.writeUInt32BE(header.blockSize, 12)
  buf.writeBigUInt64BE(BigInt(header.volumeSize), 16)
  buf.writeUInt32BE(header.extentCount, 24)
  buf.writeUInt8(FSTYPES.indexOf(header.fstype), 28)
  buf.writeBigUInt64BE(BigInt(header.dataBytes), 32)
  if (header.parent !== undefined) buf.write(header.parent, 40, 'hex')
  return buf
}

/** Decodes and checks the fixed header; throws `InvalidHyperlayerError`. */
export function decodeHeader(bytes: Uint8Array): HyperlayerHeader {
  if (bytes.byteLength < HEADER_SIZE)
    throw invalid(`a header needs ${HEADER_SIZE} bytes, got ${bytes.byteLength}`)
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, HEADER_SIZE)
  if (buf.toString('latin1', 0, 8) !== HYPERLAYER_MAGIC) throw invalid('not a hyperlayer (bad magic)')
  const version = buf.readUInt16BE(8)
  if (version !== HYPERLAYER_VERSION)
    throw invalid(`version ${version} is not supported (only ${HYPERLAYER_VERSION})`)
  if (buf.readUInt16BE(10) !== 0) throw invalid('unknown flags are set')
  const fstypeCode = buf.readUInt8(28)
  if (fstypeCode >= FSTYPES.length) throw invalid(`unknown file system code ${fstypeCode}`)
  if (!isZero(buf.subarray(29, 32)) || !isZero(buf.subarray(72, HEADER_SIZE))) {
    throw invalid('reserved header bytes are not zero')
  }
  const parentBytes = buf.subarray(40, 72)
  const header: HyperlayerHeader = {
    blockSize: buf.readUInt32BE(12),
    volumeSize: safeNumber(buf.readBigUInt64BE(16), 'volume size'),
    extentCount: buf.readUInt32BE(24),
    dataBytes: safeNumber(buf.readBigUInt64BE(32), 'data length')
  }
  const fstype = FSTYPES[fstypeCode]
  if (fstype) header.fstype = fstype
  if (!isZero(parentBytes)) header.parent = parentBytes.toString('hex')
  checkHeader(header)
  return header
}

/** Encodes the extent table. */
export function encodeExtents(extents: readonly HyperlayerExtent[]): Uint8Array {
  const buf = Buffer.alloc(extents.length * EXTENT_SIZE)
  extents.forEach((e, i) => {
    const at = i * EXTENT_SIZE
    buf.writeBigUInt64BE(BigInt(e.block), at)
    buf.writeUInt32BE(e.count, at + 8)
    buf.writeUInt8(e.kind === 'data' ? 0 : 1, at + 12)
  })
  return buf
}

/** Decodes one table entry; throws `InvalidHyperlayerError` for an unknown kind or reserved bits. */
export function decodeExtent(bytes: Uint8Array, at = 0): HyperlayerExtent {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset + at, EXTENT_SIZE)
  const kind = buf.readUInt8(12)
  if (kind > 1) throw invalid(`unknown extent kind ${kind}`)
  if (!isZero(buf.subarray(13, 16))) throw invalid('reserved extent bytes are not zero')
  return {
    block: safeNumber(buf.readBigUInt64BE(0), 'extent block'),
    count: buf.readUInt32BE(8),
    kind: kind === 0 ? 'data' : 'zero'
  }
}

/**
 * Checks a whole table against its header: every extent non-empty, inside the volume, in
 * ascending order without overlap, and the data extents adding up to `dataBytes`. Throws
 * `InvalidHyperlayerError` naming the first bad extent.
 */
export function checkExtents(header: HyperlayerHeader, extents: readonly HyperlayerExtent[]): void {
  if (extents.length !== header.extentCount) {
    throw invalid(`the header says ${header.extentCount} extents, the table has ${extents.length}`)
  }
  const blocks = Math.ceil(header.volumeSize / header.blockSize)
  let next = 0
  let data = 0
  for (const [i, e] of extents.entries()) {
    if (e.count < 1) throw invalid(`extent ${i} is empty`)
    if (e.block < next) throw invalid(`extent ${i} (block ${e.block}) overlaps or precedes the one before`)
    if (e.block + e.count > blocks) {
      throw invalid(`extent ${i} (blocks ${e.block}+${e.count}) ends past the volume's ${blocks} blocks`)
    }
    next = e.block + e.count
    if (e.kind === 'data') data += extentRange(header, e).length
  }
  if (data !== header.dataBytes) {
    throw invalid(`the data extents hold ${data} bytes, the header says ${header.dataBytes}`)
  }
}

/** Where a patch's data extents get their bytes: the child volume, `length` bytes at `offset`. */
export type ReadData = (offset: number, length: number) => AsyncIterable<Uint8Array>

/**
 * Writes a hyperlayer as a stream: header, table, then each data extent's bytes as `read` gives
 * them, never more than one of its chunks in memory. Checks the table first, and that `read`
 * gives exactly the bytes asked for.
 */
export async function* writeHyperlayer(
  header: HyperlayerHeader,
  extents: readonly HyperlayerExtent[],
  read: ReadData
): AsyncGenerator<Uint8Array> {
  checkExtents(header, extents)
  yield encodeHeader(header)
  // The table in slices: a big one is not built as one buffer twice.
  for (let i = 0; i < extents.length; i += 65536) yield encodeExtents(extents.slice(i, i + 65536))
  for (const e of extents) {
    if (e.kind !== 'data') continue
    const { offset, length } = extentRange(header, e)
    let got = 0
    for await (const chunk of read(offset, length)) {
      got += chunk.byteLength
      if (got > length) throw new Error(`read gave more than the ${length} bytes at ${offset}`)
      yield chunk
    }
    if (got !== length) throw new Error(`read gave ${got} of the ${length} bytes at ${offset}`)
  }
}

/** An opened hyperlayer: header and table read and checked, data not read yet. */
export interface OpenHyperlayer {
  header: HyperlayerHeader
  extents: HyperlayerExtent[]
  /**
   * Reads the data, handing each data extent's bytes to `write` (in order, in chunks of at most
   * `maxChunk` bytes) and each zero extent as `zero(offset, length)`; then checks the stream
   * ends there. Throws `InvalidHyperlayerError` for truncated or extra data.
   */
  copyData(
    sink: {
      write(offset: number, chunk: Uint8Array): Promise<void>
      zero(offset: number, length: number): Promise<void>
    },
    maxChunk?: number
  ): Promise<void>
}

/** Default largest data chunk handed to a sink. */
const DEFAULT_CHUNK = 1024 * 1024

/**
 * Reads a hyperlayer's header and table from `source` and checks them (the header, then every
 * extent against the volume size and the data length), before any data is used: a malformed or
 * oversized patch is refused before anything is written. Throws `InvalidHyperlayerError`.
 */
export async function openHyperlayer(source: AsyncIterable<Uint8Array>): Promise<OpenHyperlayer> {
  const reader = new ByteReader(source)
  const header = decodeHeader(await readOrThrow(reader, HEADER_SIZE, 'header'))
  const extents: HyperlayerExtent[] = []
  for (let left = header.extentCount; left > 0; ) {
    const n = Math.min(left, 65536)
    const table = await readOrThrow(reader, n * EXTENT_SIZE, 'extent table')
    for (let i = 0; i < n; i++) extents.push(decodeExtent(table, i * EXTENT_SIZE))
    left -= n
  }
  checkExtents(header, extents)
  return {
    header,
    extents,
    async copyData(sink, maxChunk = DEFAULT_CHUNK) {
      for (const e of extents) {
        const { offset, length } = extentRange(header, e)
        if (e.kind === 'zero') {
          await sink.zero(offset, length)
          continue
        }
        for (let done = 0; done < length; ) {
          const chunk = await reader.readSome(Math.min(maxChunk, length - done))
          if (!chunk) throw invalid(`the data ends inside the extent at byte ${offset + done}`)
          await sink.write(offset + done, chunk)
          done += chunk.byteLength
        }
      }
      if (!(await reader.atEnd())) throw invalid('bytes follow the last extent')
    }
  }
}

function checkHeader(h: HyperlayerHeader): void {
  if (!Number.isInteger(h.blockSize) || h.blockSize < MIN_BLOCK_SIZE || h.blockSize > MAX_BLOCK_SIZE) {
    throw invalid(`block size ${h.blockSize} is outside ${MIN_BLOCK_SIZE}..${MAX_BLOCK_SIZE}`)
  }
  if (h.blockSize % MIN_BLOCK_SIZE !== 0) throw invalid(`block size ${h.blockSize} is not a multiple of 512`)
  if (!Number.isInteger(h.volumeSize) || h.volumeSize < 1 || h.volumeSize > MAX_VOLUME_SIZE) {
    throw invalid(`volume size ${h.volumeSize} is outside 1..${MAX_VOLUME_SIZE}`)
  }
  if (h.volumeSize % MIN_BLOCK_SIZE !== 0) throw invalid(`volume size ${h.volumeSize} is not whole sectors`)
  const blocks = Math.ceil(h.volumeSize / h.blockSize)
  if (
    !Number.isInteger(h.extentCount) ||
    h.extentCount < 0 ||
    h.extentCount > Math.min(MAX_EXTENTS, blocks)
  ) {
    throw invalid(`${h.extentCount} extents: at most ${Math.min(MAX_EXTENTS, blocks)} fit this volume`)
  }
  if (!Number.isInteger(h.dataBytes) || h.dataBytes < 0 || h.dataBytes > h.volumeSize) {
    throw invalid(`data length ${h.dataBytes} is more than the volume holds`)
  }
  if (h.parent !== undefined && !/^[a-f0-9]{64}$/.test(h.parent))
    throw invalid('the parent is not 32 hex bytes')
}

async function readOrThrow(reader: ByteReader, n: number, what: string): Promise<Uint8Array> {
  const bytes = await reader.readExactly(n)
  if (!bytes) throw invalid(`the ${what} is truncated`)
  return bytes
}

function safeNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`${what} ${v} is too large`)
  return Number(v)
}

function isZero(bytes: Uint8Array): boolean {
  return bytes.every((b) => b === 0)
}

function invalid(why: string) {
  return new InvalidHyperlayerError(`invalid hyperlayer: ${why}`)
}
