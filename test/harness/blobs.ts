/**
 * Helpers shared by the piece-exchange tests on real libp2p hosts: random blobs with their
 * piece lists, seeded into a store whole or in part, and a poll for what arrives on its own.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { MIN_PIECE_SIZE } from '../../src/constants.ts'
import { digestOf } from '../../src/content/digest.ts'
import { buildPieceList, type PieceList } from '../../src/content/piece-list.ts'
import { pieceRange } from '../../src/content/pieces.ts'
import type { MemoryBlobStore } from '../../src/store/memory-blob-store.ts'

/** A blob of random bytes with its digest and piece list. */
export interface TestBlob {
  data: Uint8Array
  digest: string
  pieceList: PieceList
}

/** What `seedBlob` puts beyond its defaults. */
export interface SeedOptions {
  /** Put only the first `upTo` pieces and leave the blob incomplete (default: every piece, completed). */
  upTo?: number
  /** Begin the blob as private (default false). */
  private?: boolean
}

/** `size` random bytes cut into pieces of `pieceSize` (default the smallest piece size). */
export function makeBlob(size: number, pieceSize = MIN_PIECE_SIZE): TestBlob {
  const data = new Uint8Array(randomBytes(size))
  const digest = digestOf(data)
  return { data, digest, pieceList: buildPieceList(digest, data, pieceSize) }
}

/** Puts the pieces of `blob` in `store` as fetched from the registry, completing it when all are put. */
export async function seedBlob(
  store: MemoryBlobStore,
  blob: TestBlob,
  options: SeedOptions = {}
): Promise<void> {
  const { digest, pieceList: pl } = blob
  await store.begin(digest, { size: pl.size, pieceSize: pl.pieceSize, private: options.private ?? false })
  const count = options.upTo ?? pl.hashes.length
  for (let i = 0; i < count; i++) {
    const { start, end } = pieceRange(i, pl.size, pl.pieceSize)
    await store.putPiece(digest, i, blob.data.subarray(start, end), {
      sha256: pl.hashes[i]!,
      source: 'registry'
    })
  }
  if (options.upTo === undefined) await store.complete(digest)
}

/** Polls `check` every 20 ms until it holds, failing the test after `timeoutMs`. */
export async function waitFor(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!check()) {
    if (performance.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await sleep(20)
  }
}
