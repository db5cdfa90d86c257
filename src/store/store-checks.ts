import { sha256Hex } from '../content/digest.ts'
import { pieceRange, piecesCovering } from '../content/pieces.ts'
import {
  BlobUnknownError,
  DigestMismatchError,
  RangeNotSatisfiableError,
  SizeMismatchError
} from '../errors.ts'
import type { ByteRange } from '../interface/common.ts'
import type { BlobInfo } from '../interface/store.ts'

/**
 * Checks a piece before any store writes it: a valid index, the exact length of its range, and
 * bytes that hash to the sha256 the caller verified. Returns the piece's byte range.
 */
export function checkPiece(b: BlobInfo, index: number, data: Uint8Array, sha256: string): ByteRange {
  if (!Number.isInteger(index) || index < 0 || index >= b.pieceCount) {
    throw new RangeNotSatisfiableError(`blob ${b.digest} has no piece ${index} (it has ${b.pieceCount})`)
  }
  const range = pieceRange(index, b.size, b.pieceSize)
  if (data.byteLength !== range.end - range.start) {
    throw new SizeMismatchError(
      `piece ${index} of ${b.digest} must be ${range.end - range.start} bytes, got ${data.byteLength}`
    )
  }
  const actual = sha256Hex(data)
  if (actual !== sha256) {
    throw new DigestMismatchError(`piece ${index} of ${b.digest} hashes to ${actual}, not ${sha256}`)
  }
  return range
}

/** Throws unless `range` lies inside the blob and entirely within held pieces. */
export function checkReadRange(b: BlobInfo, range: ByteRange, held: Iterable<number>): void {
  if (
    !Number.isSafeInteger(range.start) ||
    !Number.isSafeInteger(range.end) ||
    range.start < 0 ||
    range.end > b.size ||
    range.start > range.end
  ) {
    throw new RangeNotSatisfiableError(
      `range ${range.start}-${range.end} is outside blob ${b.digest} of ${b.size} bytes`
    )
  }
  if (b.complete) return
  const have = new Set(held)
  const missing = piecesCovering(range, b.pieceSize).filter((i) => !have.has(i))
  if (missing.length > 0) {
    throw new BlobUnknownError(`blob ${b.digest} does not hold pieces ${missing.join(', ')} of the range yet`)
  }
}
