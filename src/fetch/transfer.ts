import { createHash, type Hash } from 'node:crypto'
import { setMaxListeners } from 'node:events'
import type { Logger } from 'pino'
import type { ShoalMetrics } from '../api/metrics.ts'
import { sha256Hex } from '../content/digest.ts'
import { pieceCount, pieceRange } from '../content/pieces.ts'
import { AbortedError, DigestMismatchError, toShoalError } from '../errors.ts'
import type { Clock } from '../interface/clock.ts'
import type { PeerBlobSession } from '../interface/peers.ts'
import type { BlobInfo, BlobStore, Lease, PieceSource } from '../interface/store.ts'
import type { Upstream } from '../interface/upstream.ts'
import type { BufferPool } from './buffer-pool.ts'
import type { PriorityLimit } from './priority-limit.ts'

/** One signal is shared by every piece request of a transfer: lift the listener warning. */
function abortController(): AbortController {
  const c = new AbortController()
  setMaxListeners(Number.POSITIVE_INFINITY, c.signal)
  return c
}

/** Progress of one blob, sent to every listener after each verified piece. */
export interface BlobProgress {
  digest: string
  size: number
  /** Bytes held (verified and durable), including what was held before this transfer. */
  bytesHeld: number
  /** Bytes this transfer brought in, by source. */
  fetched: Partial<Record<PieceSource, number>>
  /** Bytes that were already in the store when the transfer started (a resumed blob). */
  resumed: number
}

export interface BlobTransferComponents {
  store: BlobStore
  upstream: Upstream
  clock: Clock
  logger: Logger
  /** Caps concurrent Range requests to seed registries across all transfers, oldest first. */
  registryStreams: PriorityLimit
  /** Piece buffers reused across transfers. */
  buffers?: BufferPool
  /**
   * Pieces from a peer instead of the seed: each comes verified against the peer's piece list,
   * and the whole blob is still checked against its digest at the end.
   */
  peer?: PeerBlobSession
  metrics?: ShoalMetrics
}

export interface BlobTransferInit {
  info: BlobInfo
  repository: string
  /** Pieces already held (resume). */
  held: Iterable<number>
  /** Parallel piece requests for this blob. */
  concurrency: number
  /** Rank for registry streams: lower goes first (the fetcher numbers transfers as they start). */
  priority?: number
}

/**
 * Brings one blob into the store: pieces from the seed by HTTP Range, several in flight, each
 * hashed and written durably before it counts; the whole blob hashed incrementally in order
 * and checked against its digest before the store marks it complete. Requested ranges jump the
 * queue (on-demand reads). One instance per blob at a time (the fetcher's single-flight).
 */
export class BlobTransfer {
  readonly digest: string
  readonly size: number
  readonly pieceSize: number
  readonly count: number
  readonly #c: BlobTransferComponents
  readonly #repository: string
  readonly #concurrency: number
  readonly #rank: number
  readonly #held = new Set<number>()
  readonly #inflight = new Set<number>()
  readonly #priority: number[] = []
  #cursor = 0
  readonly #waiters = new Set<{ pieces: number[]; resolve: () => void; reject: (e: Error) => void }>()
  readonly #listeners = new Set<(p: BlobProgress) => void>()
  readonly #abort = abortController()
  readonly #source: PieceSource
  #fetched = 0
  readonly #resumed: number
  // Whole-blob digest, computed in piece order as pieces land, so completion costs no re-read.
  readonly #hash: Hash = createHash('sha256')
  #hashedUpTo = 0
  #hashChain: Promise<void> = Promise.resolve()
  #failure: Error | undefined
  #done: Promise<BlobInfo> | undefined
  readonly startedAt: number

  constructor(components: BlobTransferComponents, init: BlobTransferInit) {
    this.#c = components
    this.digest = init.info.digest
    this.size = init.info.size
    this.pieceSize = init.info.pieceSize
    this.count = pieceCount(this.size, this.pieceSize)
    this.#repository = init.repository
    this.#concurrency = init.concurrency
    this.#rank = init.priority ?? 0
    this.#source = components.peer
      ? 'peer'
      : components.upstream.kind === 'registry'
        ? 'registry'
        : 'oci-layout'
    for (const i of init.held) this.#held.add(i)
    this.#resumed = [...this.#held].reduce((n, i) => n + this.#len(i), 0)
    this.startedAt = components.clock.now()
  }

  /** Where the pieces come from: `registry`, `oci-layout` or `peer`. */
  get source(): PieceSource {
    return this.#source
  }

  /** Starts the transfer once; every caller gets the same promise. */
  run(): Promise<BlobInfo> {
    this.#done ??= this.#run()
    return this.#done
  }

  /** Aborts the transfer (agent stopping). Held pieces stay for a later resume. */
  abort(reason = 'transfer aborted'): void {
    this.#abort.abort(new AbortedError(reason))
  }

  /** Pieces held so far. */
  get piecesHeld(): number {
    return this.#held.size
  }

  /** True when piece `i` is verified and durable in the store. */
  has(i: number): boolean {
    return this.#held.has(i)
  }

  /** Progress listener; returns the function that removes it. */
  onProgress(fn: (p: BlobProgress) => void): () => void {
    this.#listeners.add(fn)
    return () => this.#listeners.delete(fn)
  }

  /** Resolves once all `pieces` are held; moves them to the front of the queue. */
  async waitFor(pieces: number[], signal?: AbortSignal): Promise<void> {
    const missing = pieces.filter((i) => !this.#held.has(i))
    if (missing.length === 0) return
    if (this.#failure) throw this.#failure
    this.#priority.unshift(...missing)
    await new Promise<void>((resolve, reject) => {
      const w = { pieces: missing, resolve, reject }
      const onAbort = () => {
        this.#waiters.delete(w)
        reject(new AbortedError('range request aborted'))
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      w.resolve = () => {
        signal?.removeEventListener('abort', onAbort)
        resolve()
      }
      this.#waiters.add(w)
    })
  }

  progress(): BlobProgress {
    return {
      digest: this.digest,
      size: this.size,
      bytesHeld: this.#resumed + this.#fetched,
      fetched: this.#fetched > 0 ? { [this.#source]: this.#fetched } : {},
      resumed: this.#resumed
    }
  }

  async #run(): Promise<BlobInfo> {
    const lease: Lease = this.#c.store.acquire(this.digest)
    this.#c.metrics?.activeTransfers.inc()
    try {
      this.#scheduleHashing()
      const workers = Array.from({ length: Math.min(this.#concurrency, Math.max(this.count, 1)) }, () =>
        this.#work()
      )
      await Promise.all(workers)
      if (this.#failure) throw this.#failure
      return await this.#finish()
    } catch (err) {
      const e = toShoalError(err)
      this.#failure ??= e
      for (const w of this.#waiters) w.reject(e)
      this.#waiters.clear()
      throw e
    } finally {
      this.#c.metrics?.activeTransfers.dec()
      lease.release()
    }
  }

  #len(i: number): number {
    const r = pieceRange(i, this.size, this.pieceSize)
    return r.end - r.start
  }

  #next(): number | undefined {
    while (this.#priority.length > 0) {
      const i = this.#priority.shift() as number
      if (!this.#held.has(i) && !this.#inflight.has(i)) return i
    }
    while (this.#cursor < this.count) {
      const i = this.#cursor++
      if (!this.#held.has(i) && !this.#inflight.has(i)) return i
    }
    return undefined
  }

  async #work(): Promise<void> {
    for (let i = this.#next(); i !== undefined && !this.#failure; i = this.#next()) {
      this.#inflight.add(i)
      try {
        await this.#fetchPiece(i)
      } catch (err) {
        this.#failure ??= toShoalError(err)
        this.#abort.abort(this.#failure)
        return
      } finally {
        this.#inflight.delete(i)
      }
    }
  }

  async #fetchPiece(i: number): Promise<void> {
    const started = this.#c.clock.now()
    const range = pieceRange(i, this.size, this.pieceSize)
    const whole = range.start === 0 && range.end === this.size
    const signal = this.#abort.signal
    const into = this.#c.buffers?.acquire(range.end - range.start)
    try {
      let data: Uint8Array
      let sha256: string
      const peer = this.#c.peer
      if (peer) {
        // Verified against the peer's piece list before it gets here.
        data = await peer.fetchPiece(i, { signal })
        sha256 = peer.pieceList.hashes[i] as string
      } else {
        const get = () =>
          this.#c.upstream.fetchBlob(
            this.#repository,
            this.digest,
            whole ? { signal, into } : { range, signal, into }
          )
        // A blob of one piece (a config, a small layer) skips the queue for registry streams:
        // the runtime usually waits on it before anything else, and it costs one short request.
        data = this.count <= 1 ? await get() : await this.#c.registryStreams.run(this.#rank, get)
        // The seed is the root of trust: a piece from it is hashed here, and the hash is what
        // the piece list records. The whole-blob digest check at the end vouches for it.
        sha256 = sha256Hex(data)
      }
      await this.#c.store.putPiece(this.digest, i, data, { sha256, source: this.#source }, { signal })
      this.#held.add(i)
      // The piece the whole-blob hash needs next is hashed now, while it is in memory; any other
      // is read back from the store (the page cache) when its turn comes.
      if (i === this.#hashedUpTo) {
        this.#hash.update(data)
        this.#hashedUpTo++
      }
      this.#fetched += data.length
      this.#c.metrics?.bytesFetched.inc({ source: this.#source }, data.length)
      this.#c.metrics?.pieceSeconds.observe({ source: this.#source }, (this.#c.clock.now() - started) / 1000)
    } finally {
      if (into) this.#c.buffers?.release(into)
    }
    this.#scheduleHashing()
    for (const w of this.#waiters) {
      if (w.pieces.every((p) => this.#held.has(p))) {
        this.#waiters.delete(w)
        w.resolve()
      }
    }
    const p = this.progress()
    for (const fn of this.#listeners) fn(p)
  }

  #scheduleHashing(): void {
    this.#hashChain = this.#hashChain.then(() => this.#hashHeldPrefix())
  }

  async #hashHeldPrefix(): Promise<void> {
    while (this.#hashedUpTo < this.count && this.#held.has(this.#hashedUpTo)) {
      const i = this.#hashedUpTo
      // Held before this transfer (resume) or landed out of order: read it back.
      const range = pieceRange(i, this.size, this.pieceSize)
      const into = this.#c.buffers?.acquire(range.end - range.start)
      try {
        const data = await this.#c.store.read(this.digest, range, { into })
        // A piece fetched meanwhile may have been hashed inline and moved the prefix on.
        if (this.#hashedUpTo !== i) continue
        this.#hash.update(data)
        this.#hashedUpTo++
      } finally {
        if (into) this.#c.buffers?.release(into)
      }
    }
  }

  async #finish(): Promise<BlobInfo> {
    await this.#hashChain
    await this.#hashHeldPrefix()
    const actual = `sha256:${this.#hash.digest('hex')}`
    if (actual !== this.digest) {
      this.#c.metrics?.verifyFailures.inc({ kind: 'blob', source: this.#source })
      this.#c.logger.warn({ digest: this.digest, actual }, 'blob failed its digest check; dropped')
      await this.#c.store.delete(this.digest)
      throw new DigestMismatchError(
        `blob ${this.digest} from ${this.#c.peer ? `peer ${this.#c.peer.peerId}` : this.#c.upstream.name} failed verification (bytes hash to ${actual}); nothing was kept`
      )
    }
    const info = await this.#c.store.complete(this.digest)
    this.#c.metrics?.blobsCompleted.inc()
    this.#c.logger.debug(
      {
        digest: this.digest,
        size: this.size,
        fetched: this.#fetched,
        ms: this.#c.clock.now() - this.startedAt
      },
      'blob complete'
    )
    return info
  }
}
