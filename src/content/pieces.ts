import { MAX_BLOB_SIZE, MAX_PIECE_SIZE, MIN_PIECE_SIZE } from '../constants.ts'
import { InvalidPieceListError } from '../errors.ts'
import type { ByteRange } from '../interface/common.ts'

/** Number of pieces of a blob (an empty blob has none). */
export function pieceCount(size: number, pieceSize: number): number {
  return Math.ceil(size / pieceSize)
}

/** The byte range of piece `index`. */
export function pieceRange(index: number, size: number, pieceSize: number): ByteRange {
  const start = index * pieceSize
  return { start, end: Math.min(start + pieceSize, size) }
}

/** Indexes of the pieces that cover `range`. */
export function piecesCovering(range: ByteRange, pieceSize: number): number[] {
  if (range.end <= range.start) return []
  const first = Math.floor(range.start / pieceSize)
  const last = Math.floor((range.end - 1) / pieceSize)
  const out: number[] = []
  for (let i = first; i <= last; i++) out.push(i)
  return out
}

/** Validates a blob size and piece size pair; throws `InvalidPieceListError`. */
export function checkGeometry(size: number, pieceSize: number): void {
  if (!Number.isSafeInteger(size) || size < 0 || size > MAX_BLOB_SIZE) {
    throw new InvalidPieceListError(`blob size ${size} is out of range (0..${MAX_BLOB_SIZE})`)
  }
  if (!Number.isSafeInteger(pieceSize) || pieceSize < MIN_PIECE_SIZE || pieceSize > MAX_PIECE_SIZE) {
    throw new InvalidPieceListError(
      `piece size ${pieceSize} is out of range (${MIN_PIECE_SIZE}..${MAX_PIECE_SIZE})`
    )
  }
}
