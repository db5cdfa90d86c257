import { DEFAULT_PIECE_SIZE } from '../constants.ts'
import { sha256Hex, verifyDigest } from '../content/digest.ts'
import { pieceCount, pieceRange } from '../content/pieces.ts'
import type { AbortOptions } from '../interface/common.ts'
import type { BlobInfo, BlobStore, PieceSource } from '../interface/store.ts'

/**
 * Stores a small blob held in memory (a manifest, an index) after checking it against its
 * digest: the store never sees bytes that were not verified.
 */
export async function putVerifiedBlob(
  store: BlobStore,
  digest: string,
  bytes: Uint8Array,
  init: { mediaType?: string; source: PieceSource; pieceSize?: number; private?: boolean },
  options: AbortOptions = {}
): Promise<BlobInfo> {
  verifyDigest(bytes, digest, 'blob')
  const existing = await store.stat(digest, options)
  // Private before the store can serve it (docs/decisions/0011-private-blobs.md).
  if (existing && init.private) await store.grantAccess(digest, { private: true }, options)
  if (existing?.complete) return existing
  const pieceSize = existing?.pieceSize ?? init.pieceSize ?? DEFAULT_PIECE_SIZE
  await store.begin(
    digest,
    { size: bytes.length, pieceSize, mediaType: init.mediaType, ...(init.private && { private: true }) },
    options
  )
  for (let i = 0; i < pieceCount(bytes.length, pieceSize); i++) {
    const r = pieceRange(i, bytes.length, pieceSize)
    const piece = bytes.subarray(r.start, r.end)
    await store.putPiece(digest, i, piece, { sha256: sha256Hex(piece), source: init.source }, options)
  }
  return store.complete(digest, options)
}
