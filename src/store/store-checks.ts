import { ACCESS_KEY_BYTES, MAX_ACCESS_KEYS } from '../content/access.ts'
import { parseDigest } from '../content/digest.ts'
import { checkGeometry, pieceCount, pieceRange, piecesCovering } from '../content/pieces.ts'
import {
  BlobUnknownError,
  InternalError,
  InvalidDigestError,
  RangeNotSatisfiableError,
  SizeMismatchError
} from '../errors.ts'
import type { ByteRange } from '../interface/common.ts'
import type { AccessGrant, BeginBlobInit, BlobAccess, BlobInfo } from '../interface/store.ts'

/**
 * Checks a piece before any store writes it: a valid index, the exact length of its range and
 * a well-formed hash. The hash itself is the caller's to verify (the fetch layer hashes every
 * piece it receives; hashing again here would double the CPU cost of every byte). A record
 * whose bytes do not match is caught by the store's re-hash of partial blobs on start.
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
  if (!/^[a-f0-9]{64}$/.test(sha256)) {
    throw new InvalidDigestError(
      `piece ${index} of ${b.digest}: "${sha256.slice(0, 80)}" is not a sha256 hex`
    )
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

/**
 * The checks and the new record shared by both stores' `begin`: a valid digest and geometry;
 * for a blob already begun, the same size and piece size (`existing` is returned as is); for a
 * new one, a fresh partial record.
 */
export function beginRecord(
  digest: string,
  init: BeginBlobInit,
  existing: BlobInfo | undefined,
  now: number
): { info: BlobInfo; fresh: boolean } {
  parseDigest(digest)
  checkGeometry(init.size, init.pieceSize)
  if (existing) {
    if (existing.size !== init.size || existing.pieceSize !== init.pieceSize) {
      throw new SizeMismatchError(
        `blob ${digest} was begun with size ${existing.size} (pieces of ${existing.pieceSize}); now claimed ${init.size} (pieces of ${init.pieceSize})`
      )
    }
    return { info: existing, fresh: false }
  }
  const info: BlobInfo = {
    digest,
    size: init.size,
    pieceSize: init.pieceSize,
    pieceCount: pieceCount(init.size, init.pieceSize),
    ...(init.mediaType !== undefined && { mediaType: init.mediaType }),
    complete: false,
    piecesHeld: 0,
    pinned: false,
    lastUsed: now
  }
  return { info, fresh: true }
}

/**
 * A blob's access after `grant`, shared by both stores: private once private; a key seen again
 * moves to the newest place, and past `MAX_ACCESS_KEYS` the oldest goes. Returns undefined when
 * nothing changed (no write needed).
 */
export function grantedAccess(current: BlobAccess, grant: AccessGrant): BlobAccess | undefined {
  const key = grant.key
  if (key !== undefined && key.length !== ACCESS_KEY_BYTES) {
    throw new InternalError(`an access key must be ${ACCESS_KEY_BYTES} bytes, not ${key.length}`)
  }
  const becomesPrivate = grant.private === true && !current.private
  const last = current.keys[current.keys.length - 1]
  const keyIsNewest = key === undefined || (last !== undefined && Buffer.from(last).equals(key))
  if (!becomesPrivate && keyIsNewest) return undefined
  let keys = current.keys
  if (key !== undefined && !keyIsNewest) {
    keys = [...keys.filter((k) => !Buffer.from(k).equals(key)), Uint8Array.from(key)]
    if (keys.length > MAX_ACCESS_KEYS) keys = keys.slice(keys.length - MAX_ACCESS_KEYS)
  }
  return { private: current.private || grant.private === true, keys }
}

/** Longest pin name kept (an image reference is at most a few hundred characters). */
export const MAX_PIN_NAME = 512

/**
 * The names pinning a blob after a `setPinned`, shared by both stores: pinning adds `name`
 * (the digest by default) once; unpinning drops `name`, or every name when none is given.
 * Returns undefined when nothing changed (no write needed).
 */
export function pinsAfter(
  b: BlobInfo,
  pinned: boolean,
  name: string | undefined
): readonly string[] | undefined {
  const current = b.pins ?? []
  if (name !== undefined && (name.length === 0 || name.length > MAX_PIN_NAME)) {
    throw new InternalError(`a pin name must be 1 to ${MAX_PIN_NAME} characters`)
  }
  if (pinned) {
    const n = name ?? b.digest
    return current.includes(n) ? undefined : Object.freeze([...current, n])
  }
  if (name === undefined) return current.length === 0 ? undefined : Object.freeze([])
  return current.includes(name) ? Object.freeze(current.filter((p) => p !== name)) : undefined
}

/** Sets a blob's pins and its `pinned` flag together (no `pins` field when it is not pinned). */
export function applyPins(b: BlobInfo, pins: readonly string[]): void {
  b.pinned = pins.length > 0
  if (b.pinned) b.pins = pins
  else delete b.pins
}
