import type { AbortOptions, ByteRange, Startable } from './common.ts'

/** Where a piece's bytes came from. Decides what may be served before the blob is verified. */
export type PieceSource = 'registry' | 'oci-layout' | 'peer'

/** What the store knows about one blob. */
export interface BlobInfo {
  digest: string
  size: number
  pieceSize: number
  pieceCount: number
  /** The upstream Content-Type (kept for manifests; blobs may have none). */
  mediaType?: string
  /** True once the whole blob passed its digest check. */
  complete: boolean
  /** Number of verified pieces held. */
  piecesHeld: number
  pinned: boolean
  /**
   * The names holding the blob pinned (image references, digests), oldest first; absent when
   * it is not pinned. A blob stays pinned while any name holds it.
   */
  pins?: readonly string[]
  /** Last use, ms since epoch (LRU eviction order). */
  lastUsed: number
}

/** One verified piece the store holds. */
export interface PieceInfo {
  index: number
  /** Lower-case hex sha256 of the piece bytes. */
  sha256: string
  source: PieceSource
}

export interface BeginBlobInit {
  size: number
  pieceSize: number
  mediaType?: string
  /** Private from its first byte (see `BlobAccess`); for a blob already begun, use `grantAccess`. */
  private?: boolean
}

/**
 * Which peers a blob may be served to (docs/decisions/0011-private-blobs.md). A public blob goes
 * to any peer of the swarm; a private one only to a peer whose proof verifies against one of
 * `keys`, the access keys of manifests this node saw that reference the blob.
 */
export interface BlobAccess {
  private: boolean
  /** 32-byte access keys, oldest first, at most `MAX_ACCESS_KEYS` (the oldest go first). */
  keys: Uint8Array[]
}

/** What `grantAccess` adds to a blob's access. */
export interface AccessGrant {
  /** Makes the blob private. A private blob stays private until it is deleted. */
  private?: boolean
  /** The access key of a manifest that references the blob (32 bytes). */
  key?: Uint8Array
}

export interface PutPieceInit {
  sha256: string
  source: PieceSource
}

export interface StoreUsage {
  /** Bytes reserved by all blobs the store tracks (complete and partial). */
  usedBytes: number
  quotaBytes: number
  blobs: number
  completeBlobs: number
}

export interface ReadOptions extends AbortOptions {
  /** Read into this buffer (at least as long as the range); the result is then a view of it. */
  into?: Uint8Array
}

/** Options of `setPinned`. */
export interface PinOptions extends AbortOptions {
  /**
   * The name the pin is held under: an image reference, a digest. Default: the blob's own
   * digest. Unpinning with a name drops only that name; without one, every name.
   */
  name?: string
}

/** Options of `evict`. */
export interface EvictOptions extends AbortOptions {
  /** Evict until the store uses at most this many bytes; without it, everything evictable. */
  targetBytes?: number
}

/** What `evict` removed. */
export interface EvictResult {
  /** The blobs evicted, least recently used first. */
  evicted: { digest: string; size: number }[]
  freedBytes: number
  /** The store's use once they are gone. */
  usage: StoreUsage
}

/** Holds a blob in use: it cannot be evicted until released. */
export interface Lease {
  release(): void
}

/**
 * Piece data on disk plus an index. The index is the commit point: a piece is "held" only once
 * its record exists, written after its bytes, so a crash at any moment leaves a consistent
 * store, and partial blobs resume after a restart (their held pieces re-hashed first).
 * Unverified bytes never reach `putPiece`: callers hash every piece and pass the hash, and
 * check the whole blob against its digest before `complete`.
 */
export interface BlobStore extends Startable {
  /** The blob's record, or undefined when the store has never begun it. */
  stat(digest: string, options?: AbortOptions): Promise<BlobInfo | undefined>
  /**
   * Start (or resume) a blob. Reserves `size` bytes of quota, evicting least-recently-used
   * complete blobs that are neither pinned nor leased; throws `StoreFullError` if that cannot
   * make room. Idempotent for the same size and piece size; a conflicting size throws
   * `SizeMismatchError`.
   */
  begin(digest: string, init: BeginBlobInit, options?: AbortOptions): Promise<BlobInfo>
  /** The verified pieces held for a blob, in index order. */
  pieces(digest: string, options?: AbortOptions): Promise<PieceInfo[]>
  /** Write one verified piece (its `sha256` computed by the caller), then record it. Idempotent. */
  putPiece(
    digest: string,
    index: number,
    data: Uint8Array,
    init: PutPieceInit,
    options?: AbortOptions
  ): Promise<void>
  /** Read bytes that lie entirely within held pieces (throws `BlobUnknownError` otherwise). */
  read(digest: string, range: ByteRange, options?: ReadOptions): Promise<Uint8Array>
  /** Stream bytes of a complete blob (Range served by the caller's choice of range). */
  stream(digest: string, range?: ByteRange): AsyncIterable<Uint8Array>
  /** Mark a blob complete: every piece held and the whole blob verified by the caller. */
  complete(digest: string, options?: AbortOptions): Promise<BlobInfo>
  /** Forget a blob and its bytes (also used to drop a blob that failed its digest check). */
  delete(digest: string, options?: AbortOptions): Promise<void>
  /**
   * Pins or unpins a blob under a name (see `PinOptions`); pinned blobs are never evicted.
   * Persisted with the blob's record. Throws `BlobUnknownError` for a blob the store lacks.
   */
  setPinned(digest: string, pinned: boolean, options?: PinOptions): Promise<void>
  /**
   * Evicts complete blobs that are neither pinned nor leased, least recently used first, down
   * to `targetBytes` (or all of them). Reaching the target is not promised: what is pinned, in
   * use or partial stays.
   */
  evict(options?: EvictOptions): Promise<EvictResult>
  /** Changes the quota; a lower one is reached by the next `evict` or `begin`. */
  setQuota(bytes: number): void
  /** Mark a blob in use (not evictable) until the lease is released. */
  acquire(digest: string): Lease
  /** Record a use (moves the blob to the back of the LRU). */
  touch(digest: string, options?: AbortOptions): Promise<void>
  /** Who peers may serve the blob to; public with no keys unless granted; undefined for an unknown blob. */
  access(digest: string, options?: AbortOptions): Promise<BlobAccess | undefined>
  /**
   * Records what a fetch learned about a begun blob: it is private, a manifest's key references
   * it. Persisted with the blob's record; throws `BlobUnknownError` for a blob never begun.
   */
  grantAccess(digest: string, grant: AccessGrant, options?: AbortOptions): Promise<void>
  /** Every blob the store tracks. */
  list(options?: AbortOptions): Promise<BlobInfo[]>
  usage(): StoreUsage
}
