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

/** About how many pieces a blob shared in a swarm is cut into (fewer once pieces reach the cap). */
export const SWARM_TARGET_PIECES = 64
/** Smallest piece a swarm cuts a blob into: below it, per-piece costs outweigh sharing. */
export const SWARM_MIN_PIECE_SIZE = 256 * 1024

/**
 * The piece size of a blob shared in a swarm: the smallest power of two from 256 KiB up to
 * `maxPieceSize` that cuts it into at most 64 pieces. A crowd then has enough pieces to split
 * the registry's work and to pass on while downloading, even for a blob of a few megabytes.
 * A function of the size alone, so every node of the swarm cuts a blob the same way.
 */
export function swarmPieceSize(size: number, maxPieceSize: number): number {
  let p = Math.min(SWARM_MIN_PIECE_SIZE, maxPieceSize)
  while (p < maxPieceSize && size > p * SWARM_TARGET_PIECES) p *= 2
  return Math.min(p, maxPieceSize)
}
