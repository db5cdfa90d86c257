import type { Logger } from 'pino'
import { BlobUnknownError, StoreClosedError, StoreCorruptError } from '../errors.ts'
import type { Clock } from '../interface/clock.ts'
import type { AbortOptions, ByteRange } from '../interface/common.ts'
import type {
  AccessGrant,
  BeginBlobInit,
  BlobAccess,
  BlobInfo,
  BlobStore,
  EvictOptions,
  EvictResult,
  Lease,
  PieceInfo,
  PinOptions,
  PutPieceInit,
  StoreUsage
} from '../interface/store.ts'
import { LruQuota } from './lru-quota.ts'
import {
  applyPins,
  beginRecord,
  checkPiece,
  checkReadRange,
  grantedAccess,
  pinsAfter
} from './store-checks.ts'

export interface MemoryBlobStoreComponents {
  clock: Clock
  logger: Logger
}

export interface MemoryBlobStoreInit {
  /** Bytes all blobs together may reserve (see `StoreUsage.usedBytes`). */
  quotaBytes: number
  /** Told of every blob evicted for room. */
  onEvict?: (digest: string) => void
}

/**
 * A `BlobStore` in memory: the same contract as the LevelDB store, for unit tests and the
 * swarm simulator. Nothing is written anywhere; the contents last as long as the instance (a
 * `stop()` and `start()` of the same instance keeps them, like an agent restart).
 */
export class MemoryBlobStore implements BlobStore {
  readonly #log: Logger
  readonly #clock: Clock
  readonly #quota: LruQuota
  readonly #onEvict: ((digest: string) => void) | undefined
  readonly #data = new Map<string, Uint8Array>()
  readonly #pieces = new Map<string, Map<number, PieceInfo>>()
  readonly #access = new Map<string, BlobAccess>()
  #open = false

  constructor(components: MemoryBlobStoreComponents, init: MemoryBlobStoreInit) {
    this.#log = components.logger.child({ component: 'store' })
    this.#clock = components.clock
    this.#quota = new LruQuota(init.quotaBytes)
    this.#onEvict = init.onEvict
  }

  async start(): Promise<void> {
    this.#open = true
  }

  async stop(): Promise<void> {
    this.#open = false
  }

  async stat(digest: string): Promise<BlobInfo | undefined> {
    const b = this.#blob(digest, false)
    return b && { ...b }
  }

  async begin(digest: string, init: BeginBlobInit, _o?: AbortOptions): Promise<BlobInfo> {
    this.#check()
    const { info, fresh } = beginRecord(digest, init, this.#quota.blobs.get(digest), this.#clock.now())
    if (!fresh) return { ...info }
    // Evict and claim the room in one synchronous step, so a concurrent begin cannot count the
    // same victims or the same free bytes.
    for (const victim of this.#quota.victimsFor(digest, init.size)) {
      this.#log.info({ digest: victim }, 'evicting least recently used blob')
      this.#onEvict?.(victim)
      this.#forget(victim)
    }
    this.#quota.blobs.set(digest, info)
    this.#data.set(digest, new Uint8Array(init.size))
    this.#pieces.set(digest, new Map())
    this.#access.set(digest, { private: init.private === true, keys: [] })
    return { ...info }
  }

  async pieces(digest: string): Promise<PieceInfo[]> {
    this.#check()
    return [...(this.#pieces.get(digest)?.values() ?? [])].sort((a, b) => a.index - b.index)
  }

  async putPiece(digest: string, index: number, data: Uint8Array, init: PutPieceInit): Promise<void> {
    const b = this.#blob(digest, true)
    const range = checkPiece(b, index, data, init.sha256)
    const held = this.#pieces.get(digest) as Map<number, PieceInfo>
    if (held.has(index)) return
    this.#data.get(digest)?.set(data, range.start)
    held.set(index, { index, sha256: init.sha256, source: init.source })
    b.piecesHeld = held.size
  }

  async read(digest: string, range: ByteRange): Promise<Uint8Array> {
    const b = this.#blob(digest, true)
    checkReadRange(b, range, this.#pieces.get(digest)?.keys() ?? [])
    return (this.#data.get(digest) as Uint8Array).slice(range.start, range.end)
  }

  async *stream(digest: string, range?: ByteRange): AsyncIterable<Uint8Array> {
    const b = this.#blob(digest, true)
    if (!b.complete) throw new BlobUnknownError(`blob ${digest} is not complete`)
    const r = range ?? { start: 0, end: b.size }
    checkReadRange(b, r, this.#pieces.get(digest)?.keys() ?? [])
    const data = this.#data.get(digest) as Uint8Array
    for (let at = r.start; at < r.end; at += 256 * 1024)
      yield data.slice(at, Math.min(at + 256 * 1024, r.end))
  }

  async complete(digest: string): Promise<BlobInfo> {
    const b = this.#blob(digest, true)
    if (b.complete) return { ...b }
    if (b.piecesHeld !== b.pieceCount) {
      throw new StoreCorruptError(
        `blob ${digest} cannot complete: ${b.piecesHeld} of ${b.pieceCount} pieces held`
      )
    }
    b.complete = true
    b.lastUsed = this.#clock.now()
    return { ...b }
  }

  async delete(digest: string): Promise<void> {
    this.#check()
    this.#forget(digest)
  }

  async setPinned(digest: string, pinned: boolean, options: PinOptions = {}): Promise<void> {
    const b = this.#blob(digest, true)
    const pins = pinsAfter(b, pinned, options.name)
    if (pins) applyPins(b, pins)
  }

  async evict(options: EvictOptions = {}): Promise<EvictResult> {
    this.#check()
    const evicted: { digest: string; size: number }[] = []
    for (const b of this.#quota.evictable(options.targetBytes)) {
      this.#log.info({ digest: b.digest, size: b.size }, 'evicting blob')
      this.#onEvict?.(b.digest)
      this.#forget(b.digest)
      evicted.push({ digest: b.digest, size: b.size })
    }
    const freedBytes = evicted.reduce((n, e) => n + e.size, 0)
    return { evicted, freedBytes, usage: this.#quota.usage() }
  }

  setQuota(bytes: number): void {
    this.#quota.setQuota(bytes)
  }

  acquire(digest: string): Lease {
    return this.#quota.acquire(digest)
  }

  async touch(digest: string): Promise<void> {
    const b = this.#blob(digest, false)
    if (b) b.lastUsed = this.#clock.now()
  }

  async access(digest: string): Promise<BlobAccess | undefined> {
    if (!this.#blob(digest, false)) return undefined
    const a = this.#access.get(digest) ?? { private: false, keys: [] }
    return { private: a.private, keys: [...a.keys] }
  }

  async grantAccess(digest: string, grant: AccessGrant): Promise<void> {
    this.#blob(digest, true)
    const next = grantedAccess(this.#access.get(digest) ?? { private: false, keys: [] }, grant)
    if (next) this.#access.set(digest, next)
  }

  async list(): Promise<BlobInfo[]> {
    this.#check()
    return [...this.#quota.blobs.values()].map((b) => ({ ...b }))
  }

  usage(): StoreUsage {
    this.#check()
    return this.#quota.usage()
  }

  #forget(digest: string): void {
    this.#quota.blobs.delete(digest)
    this.#data.delete(digest)
    this.#pieces.delete(digest)
    this.#access.delete(digest)
  }

  #check(): void {
    if (!this.#open) throw new StoreClosedError('the store is not open')
  }

  #blob(digest: string, required: true): BlobInfo
  #blob(digest: string, required: false): BlobInfo | undefined
  #blob(digest: string, required: boolean): BlobInfo | undefined {
    this.#check()
    const b = this.#quota.blobs.get(digest)
    if (!b && required) throw new BlobUnknownError(`the store has no blob ${digest}`)
    return b
  }
}
