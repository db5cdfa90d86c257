import type { Logger } from 'pino'
import type { ShoalMetrics } from '../api/metrics.ts'
import {
  DEFAULT_PIECE_SIZE,
  DEFAULT_REGISTRY_PIECE_CONCURRENCY,
  DEFAULT_REGISTRY_STREAMS
} from '../constants.ts'
import { parseDigest } from '../content/digest.ts'
import { piecesCovering } from '../content/pieces.ts'
import { AbortedError, RangeNotSatisfiableError } from '../errors.ts'
import type { Clock } from '../interface/clock.ts'
import type { AbortOptions, ByteRange, Startable } from '../interface/common.ts'
import type { PeerBlobSession, PeerSource } from '../interface/peers.ts'
import type { BlobInfo, BlobStore } from '../interface/store.ts'
import type { Upstream, UpstreamResolver } from '../interface/upstream.ts'
import { BufferPool } from './buffer-pool.ts'
import { PriorityLimit } from './priority-limit.ts'
import { type BlobProgress, BlobTransfer, type BlobTransferComponents } from './transfer.ts'

/** A blob to bring in, and where the seed keeps it. */
export interface BlobRequest {
  digest: string
  /** From the descriptor when known; otherwise the seed is asked (HEAD). */
  size?: number
  mediaType?: string
  registry: string
  repository: string
}

export interface FetchBlobOptions extends AbortOptions {
  onProgress?: (p: BlobProgress) => void
}

export interface BlobFetcherComponents {
  store: BlobStore
  upstreams: UpstreamResolver
  clock: Clock
  logger: Logger
  metrics?: ShoalMetrics
  /** Peers that may hold a blob (the swarm); without it every blob comes from its seed. */
  peers?: PeerSource
}

export interface BlobFetcherInit {
  /** Piece size for blobs this node starts (default 4 MiB). */
  pieceSize?: number
  /** Parallel Range requests per blob (default 8). */
  registryConcurrency?: number
  /** Cap on Range requests in flight to seeds across all blobs (default 16). */
  registryStreams?: number
  /** Parallel piece requests per blob to a peer (default 4). */
  peerConcurrency?: number
  /** How long a blob whose peer transfer failed is fetched from its seed only (default 10 min). */
  peerBanMs?: number
}

/** What a transfer in flight looks like from `shoal status`. */
export interface TransferStatus {
  digest: string
  size: number
  piecesHeld: number
  pieceCount: number
  bytesHeld: number
  startedAt: number
}

/**
 * Makes blobs complete and verified in the store. Single-flight per digest: concurrent callers
 * (a pull, the mirror, a range read) share one transfer. Partial blobs resume from the pieces
 * the store already holds.
 */
export class BlobFetcher implements Startable {
  readonly #c: BlobFetcherComponents
  readonly #pieceSize: number
  readonly #concurrency: number
  readonly #streams: PriorityLimit
  #transferSeq = 0
  readonly #buffers: BufferPool
  readonly #transfers = new Map<string, Promise<BlobTransfer>>()
  readonly #live = new Map<string, BlobTransfer>()
  readonly #log: Logger
  readonly #peerConcurrency: number
  readonly #peerBanMs: number
  /** Blobs whose peer transfer failed, until when peers are not asked for them again. */
  readonly #seedOnly = new Map<string, number>()
  /** Settles once a failed peer transfer is cleaned up and a seed transfer may start. */
  readonly #settled = new WeakMap<BlobTransfer, Promise<void>>()

  constructor(components: BlobFetcherComponents, init: BlobFetcherInit = {}) {
    this.#c = components
    this.#pieceSize = init.pieceSize ?? DEFAULT_PIECE_SIZE
    this.#concurrency = init.registryConcurrency ?? DEFAULT_REGISTRY_PIECE_CONCURRENCY
    this.#streams = new PriorityLimit(init.registryStreams ?? DEFAULT_REGISTRY_STREAMS)
    // Room for every stream plus a read-back per transfer, so steady state allocates nothing.
    this.#buffers = new BufferPool(this.#pieceSize, 2 * (init.registryStreams ?? DEFAULT_REGISTRY_STREAMS))
    this.#log = components.logger.child({ component: 'fetch' })
    // Pieces in flight per peer session: 4 x 4 MiB stays well inside the stream read buffer.
    this.#peerConcurrency = init.peerConcurrency ?? 4
    this.#peerBanMs = init.peerBanMs ?? 10 * 60 * 1000
  }

  async start(): Promise<void> {}

  /** Aborts transfers in flight; their held pieces stay in the store for a resume. */
  async stop(): Promise<void> {
    for (const t of this.#live.values()) t.abort('agent stopping')
    await Promise.allSettled([...this.#live.values()].map((t) => t.run()))
  }

  /** Ensures the blob is complete and verified in the store; returns its record. */
  async fetch(req: BlobRequest, options: FetchBlobOptions = {}): Promise<BlobInfo> {
    parseDigest(req.digest)
    const existing = await this.#c.store.stat(req.digest, options)
    if (existing?.complete) {
      await this.#c.store.touch(req.digest)
      options.onProgress?.({
        digest: req.digest,
        size: existing.size,
        bytesHeld: existing.size,
        fetched: {},
        resumed: existing.size
      })
      return existing
    }
    const transfer = await this.#transfer(req, options)
    const off = options.onProgress ? transfer.onProgress(options.onProgress) : undefined
    try {
      if (options.onProgress) options.onProgress(transfer.progress())
      return await raceSignal(transfer.run(), options.signal)
    } catch (err) {
      // A transfer from a peer that failed (the peer went away, sent a bad piece, or its piece
      // list led to a wrong blob) falls back to the seed; once it is cleaned up, go again.
      if (transfer.source !== 'peer' || options.signal?.aborted) throw err
      await this.#settled.get(transfer)
      return this.fetch(req, options)
    } finally {
      off?.()
    }
  }

  /**
   * Ensures the pieces covering `range` are held (fetched first, ahead of the rest of the blob)
   * and returns the blob's record. The rest of the blob keeps coming in the background.
   */
  async fetchRange(req: BlobRequest, range: ByteRange, options: AbortOptions = {}): Promise<BlobInfo> {
    parseDigest(req.digest)
    const existing = await this.#c.store.stat(req.digest, options)
    if (existing?.complete) {
      checkRange(range, existing.size)
      return existing
    }
    const transfer = await this.#transfer(req, options)
    checkRange(range, transfer.size)
    const done = transfer.run()
    done.catch(() => {}) // failures reach the caller through waitFor
    await transfer.waitFor(piecesCovering(range, transfer.pieceSize), options.signal)
    return (await this.#c.store.stat(req.digest, options)) as BlobInfo
  }

  /** Transfers in flight. */
  status(): TransferStatus[] {
    return [...this.#live.values()].map((t) => {
      const p = t.progress()
      return {
        digest: t.digest,
        size: t.size,
        piecesHeld: t.piecesHeld,
        pieceCount: t.count,
        bytesHeld: p.bytesHeld,
        startedAt: t.startedAt
      }
    })
  }

  #transfer(req: BlobRequest, options: AbortOptions): Promise<BlobTransfer> {
    let pending = this.#transfers.get(req.digest)
    if (pending === undefined) {
      pending = this.#open(req, options)
      this.#transfers.set(req.digest, pending)
      pending.then(
        (t) => {
          const settled = t.run().then(
            () => {
              this.#forget(req.digest)
              this.#c.peers?.announce(req.digest)
            },
            async (err) => {
              if (t.source === 'peer') await this.#dropPeerTransfer(t, err)
              this.#forget(req.digest)
            }
          )
          this.#settled.set(t, settled)
        },
        () => this.#forget(req.digest)
      )
    }
    return pending
  }

  #forget(digest: string): void {
    this.#transfers.delete(digest)
    this.#live.delete(digest)
  }

  #transferComponents(upstream: Upstream): BlobTransferComponents {
    return {
      store: this.#c.store,
      upstream,
      clock: this.#c.clock,
      logger: this.#log,
      registryStreams: this.#streams,
      ...(this.#c.metrics && { metrics: this.#c.metrics })
    }
  }

  /** Forgets what a failed peer transfer brought in and keeps peers out of this blob a while. */
  async #dropPeerTransfer(t: BlobTransfer, err: unknown): Promise<void> {
    this.#seedOnly.set(t.digest, this.#c.clock.now() + this.#peerBanMs)
    this.#log.warn(
      { digest: t.digest, err: (err as Error).message },
      'peer transfer failed; falling back to the seed'
    )
    const info = await this.#c.store.stat(t.digest).catch(() => undefined)
    if (info && !info.complete) await this.#c.store.delete(t.digest).catch(() => undefined)
  }

  /** A session with a peer holding the blob, when the swarm has one and the blob is not begun. */
  async #peerSession(req: BlobRequest, options: AbortOptions): Promise<PeerBlobSession | undefined> {
    const peers = this.#c.peers
    if (!peers) return undefined
    const until = this.#seedOnly.get(req.digest)
    if (until !== undefined) {
      if (until > this.#c.clock.now()) return undefined
      this.#seedOnly.delete(req.digest)
    }
    try {
      const session = await peers.open(req.digest, { ...options, size: req.size })
      if (session && req.size !== undefined && session.pieceList.size !== req.size) {
        await session.close()
        return undefined
      }
      return session
    } catch (err) {
      this.#log.debug({ digest: req.digest, err: (err as Error).message }, 'no peer session')
      return undefined
    }
  }

  async #open(req: BlobRequest, options: AbortOptions): Promise<BlobTransfer> {
    const upstream = this.#c.upstreams.resolve(req.registry)
    const known = await this.#c.store.stat(req.digest, options)
    // Peers are asked only for a blob this node has not begun: a partial blob resumes from the
    // seed with its own piece size.
    const peer = known === undefined ? await this.#peerSession(req, options) : undefined
    if (peer) return this.#openFromPeer(req, peer, upstream, options)
    const size =
      known?.size ?? req.size ?? (await upstream.statBlob(req.repository, req.digest, options)).size
    const info = await this.#c.store.begin(
      req.digest,
      { size, pieceSize: known?.pieceSize ?? this.#pieceSize, mediaType: req.mediaType },
      options
    )
    const held = (await this.#c.store.pieces(req.digest, options)).map((p) => p.index)
    if (held.length > 0) this.#log.info({ digest: req.digest, held: held.length }, 'resuming partial blob')
    const transfer = new BlobTransfer(
      { ...this.#transferComponents(upstream), buffers: this.#buffers },
      {
        info,
        repository: req.repository,
        held,
        concurrency: this.#concurrency,
        priority: this.#transferSeq++
      }
    )
    this.#live.set(req.digest, transfer)
    return transfer
  }

  async #openFromPeer(
    req: BlobRequest,
    peer: PeerBlobSession,
    upstream: Upstream,
    options: AbortOptions
  ): Promise<BlobTransfer> {
    const pl = peer.pieceList
    let info: BlobInfo
    try {
      info = await this.#c.store.begin(
        req.digest,
        { size: pl.size, pieceSize: pl.pieceSize, mediaType: req.mediaType },
        options
      )
    } catch (err) {
      await peer.close()
      throw err
    }
    this.#log.debug({ digest: req.digest, peer: peer.peerId }, 'fetching from a peer')
    const transfer = new BlobTransfer(
      { ...this.#transferComponents(upstream), peer },
      {
        info,
        repository: req.repository,
        held: [],
        concurrency: this.#peerConcurrency,
        priority: this.#transferSeq++
      }
    )
    const closeSession = () => {
      peer.close().catch(() => undefined)
    }
    transfer.run().then(closeSession, closeSession)
    this.#live.set(req.digest, transfer)
    return transfer
  }
}

function checkRange(range: ByteRange, size: number): void {
  if (range.start < 0 || range.end > size || range.start >= range.end) {
    throw new RangeNotSatisfiableError(
      `range ${range.start}-${range.end - 1} is outside the blob (${size} bytes)`
    )
  }
}

/** Waits for `p` but gives up (without cancelling `p`) when the caller's signal aborts. */
async function raceSignal<T>(p: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (signal === undefined) return p
  if (signal.aborted) throw new AbortedError('request aborted')
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new AbortedError('request aborted'))
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort)
        resolve(v)
      },
      (e) => {
        signal.removeEventListener('abort', onAbort)
        reject(e)
      }
    )
  })
}
