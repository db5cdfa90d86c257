import {
  DigestMismatchError,
  InvalidPieceListError,
  RangeNotSatisfiableError,
  SizeMismatchError
} from '../errors.ts'
import { digestHex, digestOf, isDigest, sha256Hex } from './digest.ts'
import { checkGeometry, pieceCount, pieceRange } from './pieces.ts'

/**
 * The piece list of a blob: its geometry and the sha256 of every piece. It is small and named by
 * the sha256 of its canonical encoding (`pieceListId`), so a peer that names the id it sent can be
 * held to it.
 */
export interface PieceList {
  /** The blob's OCI digest, `sha256:<hex>`. */
  digest: string
  /** The blob's size in bytes. */
  size: number
  /** Bytes per piece (the last piece may be shorter). */
  pieceSize: number
  /** Lower-case hex sha256 of every piece, in order. */
  hashes: string[]
}

/**
 * Most pieces a piece list may have. A 1 TiB blob (MAX_BLOB_SIZE) at the default 4 MiB piece size
 * has exactly this many; bounding it keeps a piece list under 8 MiB and a have-bitfield under
 * 32 KiB (one control frame), whatever a peer claims.
 */
export const MAX_PIECE_LIST_PIECES = 2 ** 18

// Layout (all fixed-width, so one list has exactly one encoding):
//   magic "SHPL" | version u8 = 1 | blob sha256 (32 raw bytes) | size u64 BE | pieceSize u32 BE |
//   piece sha256 x pieceCount (32 raw bytes each)
const MAGIC = [0x53, 0x48, 0x50, 0x4c] as const
const VERSION = 1
const HEADER_BYTES = 4 + 1 + 32 + 8 + 4
const HASH_BYTES = 32
const HEX_RE = /^[a-f0-9]{64}$/

/** Largest encoded piece list (header plus MAX_PIECE_LIST_PIECES hashes). */
export const MAX_PIECE_LIST_BYTES = HEADER_BYTES + MAX_PIECE_LIST_PIECES * HASH_BYTES

/** What the decoder must find, when the caller already knows it. */
export interface PieceListExpectation {
  /** The blob digest the list must describe. */
  digest?: string
  /** The blob size the list must declare. */
  size?: number
  /** The piece list id (sha256 of the encoding) the bytes must hash to. */
  id?: string
}

/** Encodes a piece list canonically (the same list always gives the same bytes). */
export function encodePieceList(pl: PieceList): Uint8Array {
  const count = checkShape(pl.digest, pl.size, pl.pieceSize)
  if (pl.hashes.length !== count) {
    throw new InvalidPieceListError(
      `piece list of ${pl.digest} has ${pl.hashes.length} hashes, its geometry needs ${count}`
    )
  }
  const out = new Uint8Array(HEADER_BYTES + count * HASH_BYTES)
  const view = new DataView(out.buffer)
  out.set(MAGIC, 0)
  out[4] = VERSION
  out.set(Buffer.from(digestHex(pl.digest), 'hex'), 5)
  view.setBigUint64(37, BigInt(pl.size))
  view.setUint32(45, pl.pieceSize)
  for (let i = 0; i < count; i++) {
    const h = pl.hashes[i] as string
    if (!HEX_RE.test(h)) {
      throw new InvalidPieceListError(`hash of piece ${i} of ${pl.digest} is not 64 lower-case hex digits`)
    }
    out.set(Buffer.from(h, 'hex'), HEADER_BYTES + i * HASH_BYTES)
  }
  return out
}

/**
 * Decodes and validates an encoded piece list: format, geometry, hash count, and whatever the
 * caller expects (blob digest, size, list id). Throws `InvalidPieceListError` saying what is wrong.
 */
export function decodePieceList(bytes: Uint8Array, expect: PieceListExpectation = {}): PieceList {
  if (bytes.length < HEADER_BYTES) {
    throw new InvalidPieceListError(
      `piece list is ${bytes.length} bytes, shorter than its ${HEADER_BYTES}-byte header`
    )
  }
  if (bytes.length > MAX_PIECE_LIST_BYTES) {
    throw new InvalidPieceListError(
      `piece list is ${bytes.length} bytes, over the ${MAX_PIECE_LIST_BYTES}-byte limit`
    )
  }
  if (MAGIC.some((b, i) => bytes[i] !== b)) throw new InvalidPieceListError('piece list has no SHPL magic')
  if (bytes[4] !== VERSION) throw new InvalidPieceListError(`piece list version ${bytes[4]} is not supported`)
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const digest = `sha256:${hex(bytes, 5, 37)}`
  const size64 = view.getBigUint64(37)
  if (size64 > BigInt(Number.MAX_SAFE_INTEGER))
    throw new InvalidPieceListError(`blob size ${size64} is out of range`)
  const size = Number(size64)
  const pieceSize = view.getUint32(45)
  const count = checkShape(digest, size, pieceSize)
  const want = HEADER_BYTES + count * HASH_BYTES
  if (bytes.length !== want) {
    throw new InvalidPieceListError(
      `piece list of ${digest} is ${bytes.length} bytes; ${count} pieces of ${pieceSize} for ${size} bytes need ${want}`
    )
  }
  if (expect.digest !== undefined && expect.digest !== digest) {
    throw new InvalidPieceListError(`piece list describes ${digest}, expected ${expect.digest}`)
  }
  if (expect.size !== undefined && expect.size !== size) {
    throw new InvalidPieceListError(`piece list of ${digest} declares ${size} bytes, expected ${expect.size}`)
  }
  if (expect.id !== undefined) {
    const id = digestOf(bytes)
    if (id !== expect.id)
      throw new InvalidPieceListError(`piece list of ${digest} hashes to ${id}, expected ${expect.id}`)
  }
  const hashes: string[] = new Array(count)
  for (let i = 0; i < count; i++) {
    const at = HEADER_BYTES + i * HASH_BYTES
    hashes[i] = hex(bytes, at, at + HASH_BYTES)
  }
  return { digest, size, pieceSize, hashes }
}

/** The id of a piece list: the sha256 digest (`sha256:<hex>`) of its canonical encoding. */
export function pieceListId(pl: PieceList): string {
  return digestOf(encodePieceList(pl))
}

/**
 * Builds the piece list of `data` (for seeding and tests). `digest` is checked for form only:
 * the caller vouches that it names `data`.
 */
export function buildPieceList(digest: string, data: Uint8Array, pieceSize: number): PieceList {
  const count = checkShape(digest, data.length, pieceSize)
  const hashes: string[] = new Array(count)
  for (let i = 0; i < count; i++) {
    const { start, end } = pieceRange(i, data.length, pieceSize)
    hashes[i] = sha256Hex(data.subarray(start, end))
  }
  return { digest, size: data.length, pieceSize, hashes }
}

/**
 * Checks piece `index` against the list: its length (`SizeMismatchError`), then its sha256
 * (`DigestMismatchError`). An index outside the blob throws `RangeNotSatisfiableError`.
 */
export function verifyPiece(pl: PieceList, index: number, data: Uint8Array): void {
  const expected = pl.hashes[index]
  if (!Number.isSafeInteger(index) || index < 0 || expected === undefined) {
    throw new RangeNotSatisfiableError(`piece ${index} is outside ${pl.digest} (${pl.hashes.length} pieces)`)
  }
  const { start, end } = pieceRange(index, pl.size, pl.pieceSize)
  if (data.length !== end - start) {
    throw new SizeMismatchError(
      `piece ${index} of ${pl.digest} is ${data.length} bytes, expected ${end - start}`
    )
  }
  const actual = sha256Hex(data)
  if (actual !== expected) {
    throw new DigestMismatchError(`piece ${index} of ${pl.digest} hashes to ${actual}, not ${expected}`)
  }
}

/** Validates digest and geometry and returns the piece count. */
function checkShape(digest: string, size: number, pieceSize: number): number {
  if (!isDigest(digest)) throw new InvalidPieceListError(`piece list names "${digest}", not a sha256 digest`)
  checkGeometry(size, pieceSize)
  const count = pieceCount(size, pieceSize)
  if (count > MAX_PIECE_LIST_PIECES) {
    throw new InvalidPieceListError(
      `${size} bytes in pieces of ${pieceSize} make ${count} pieces, over the limit of ${MAX_PIECE_LIST_PIECES}: use larger pieces`
    )
  }
  return count
}

function hex(bytes: Uint8Array, start: number, end: number): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset + start, end - start).toString('hex')
}
