import { InternalError, StoreFullError } from '../errors.ts'
import type { BlobInfo, Lease, StoreUsage } from '../interface/store.ts'

/**
 * The part of a store that decides what may be evicted: blob records in memory, leases on
 * blobs in use, and the choice of least-recently-used victims that frees room for a new blob.
 * Both store implementations use it, so eviction behaves the same in tests and in production.
 */
export class LruQuota {
  #quotaBytes: number
  readonly blobs = new Map<string, BlobInfo>()
  readonly #leases = new Map<string, number>()

  constructor(quotaBytes: number) {
    this.#quotaBytes = checkQuota(quotaBytes)
  }

  get quotaBytes(): number {
    return this.#quotaBytes
  }

  /** A new quota (a reload); blobs beyond it go at the next eviction. */
  setQuota(bytes: number): void {
    this.#quotaBytes = checkQuota(bytes)
  }

  usage(): StoreUsage {
    let usedBytes = 0
    let completeBlobs = 0
    for (const b of this.blobs.values()) {
      usedBytes += b.size
      if (b.complete) completeBlobs++
    }
    return { usedBytes, quotaBytes: this.quotaBytes, blobs: this.blobs.size, completeBlobs }
  }

  /** Holds `digest` until the lease is released; leases nest. */
  acquire(digest: string): Lease {
    this.#leases.set(digest, (this.#leases.get(digest) ?? 0) + 1)
    let released = false
    return {
      release: () => {
        if (released) return
        released = true
        const n = (this.#leases.get(digest) ?? 1) - 1
        if (n <= 0) this.#leases.delete(digest)
        else this.#leases.set(digest, n)
      }
    }
  }

  leased(digest: string): boolean {
    return this.#leases.has(digest)
  }

  /**
   * The blobs to evict, oldest use first, so that `needed` more bytes fit the quota. Only
   * complete blobs that are neither pinned nor leased qualify. Throws `StoreFullError` (and
   * evicts nothing) when even all of them would not make room.
   */
  victimsFor(digest: string, needed: number): string[] {
    let used = this.usage().usedBytes
    if (used + needed <= this.quotaBytes) return []
    const candidates = this.#candidates(digest)
    const victims: string[] = []
    for (const b of candidates) {
      if (used + needed <= this.quotaBytes) break
      victims.push(b.digest)
      used -= b.size
    }
    if (used + needed > this.quotaBytes) {
      const evictable = candidates.reduce((n, b) => n + b.size, 0)
      throw new StoreFullError(
        `blob ${digest} needs ${needed} bytes; the quota is ${this.quotaBytes}, ${this.usage().usedBytes} are used and only ${evictable} could be evicted (the rest is pinned, in use or partial)`
      )
    }
    return victims
  }

  /**
   * The blobs to evict, oldest use first, to bring the store down to `targetBytes` (all that
   * qualify when undefined); as many as there are when even all of them do not reach it.
   */
  evictable(targetBytes?: number): BlobInfo[] {
    let used = this.usage().usedBytes
    const out: BlobInfo[] = []
    for (const b of this.#candidates(undefined)) {
      if (targetBytes !== undefined && used <= targetBytes) break
      out.push(b)
      used -= b.size
    }
    return out
  }

  /** Complete blobs neither pinned nor leased (but `except`), least recently used first. */
  #candidates(except: string | undefined): BlobInfo[] {
    return [...this.blobs.values()]
      .filter((b) => b.digest !== except && b.complete && !b.pinned && !this.leased(b.digest))
      .sort((a, b) => a.lastUsed - b.lastUsed)
  }
}

function checkQuota(bytes: number): number {
  if (!Number.isSafeInteger(bytes) || bytes < 0) throw new InternalError(`a quota of ${bytes} bytes`)
  return bytes
}
