import type { Logger } from 'pino'
import type { ShoalMetrics } from '../api/metrics.ts'
import {
  DEFAULT_PIECE_SIZE,
  DEFAULT_REGISTRY_PIECE_CONCURRENCY,
  DEFAULT_REGISTRY_STREAMS
} from '../constants.ts'
import { parseDigest } from '../content/digest.ts'
import { piecesCovering, swarmPieceSize } from '../content/pieces.ts'
import { AbortedError, RangeNotSatisfiableError } from '../errors.ts'
import type { Clock } from '../interface/clock.ts'
import type { AbortOptions, ByteRange, Startable } from '../interface/common.ts'
import type { PeerSource } from '../interface/peers.ts'
import type { BlobInfo, BlobStore } from '../interface/store.ts'
import type { UpstreamResolver } from '../interface/upstream.ts'
import { BufferPool } from './buffer-pool.ts'
import { PriorityLimit } from './priority-limit.ts'
import type { TokenBucket } from './token-bucket.ts'
import { type BlobProgress, BlobTransfer } from './transfer.ts'

/** A blob to bring in, and where the seed keeps it. */
export interface BlobRequest {
  digest: string
  /** From the descriptor when known; otherwise the seed is asked (HEAD). */
  size?: number
  mediaType?: string
  registry: string
  repository: string
  /**
   * The access key of the manifest the blob was named by (content/access.ts): it lets peers
   * holding the blob privately serve it. Without it a private blob comes from the registry.
   */
  accessKey?: Uint8Array | undefined
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
  /** Piece requests in flight per peer (default 4). */
  peerDepth?: number
  /** How long a peer's `fetching` claim keeps this node off a piece (default: the transfer's). */
  claimTtlMs?: number
  /** Members of a swarm that take its pieces from the registry (default: every member). */
  registryFetchers?: number | undefined
  /** A node with nothing to ask of peers may take any unclaimed piece (default true). */
  starvingTakesAny?: boolean | undefined
  /** Paces what this node downloads, from peers and registries together. */
  download?: TokenBucket | undefined
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
 * the store already holds. With a swarm, each transfer joins the blob's swarm: pieces come from
 * peers and the seed at once (see `BlobTransfer`), and peers fetch from this node meanwhile.
 */
export class BlobFetcher implements Startable {
  readonly #c: BlobFetcherComponents
  readonly #pieceSize: number
  readonly #concurrency: number
  readonly #peerDepth: number
  readonly #claimTtlMs: number | undefined
  readonly #swarmPolicy: { registryFetchers?: number; starvingTakesAny?: boolean }
  readonly #download: TokenBucket | undefined
  readonly #streams: PriorityLimit
  #transferSeq = 0
  readonly #buffers: BufferPool
  readonly #transfers = new Map<string, Promise<BlobTransfer>>()
  readonly #live = new Map<string, BlobTransfer>()
  readonly #log: Logger

  constructor(components: BlobFetcherComponents, init: BlobFetcherInit = {}) {
    this.#c = components
    this.#pieceSize = init.pieceSize ?? DEFAULT_PIECE_SIZE
    this.#concurrency = init.registryConcurrency ?? DEFAULT_REGISTRY_PIECE_CONCURRENCY
    this.#streams = new PriorityLimit(init.registryStreams ?? DEFAULT_REGISTRY_STREAMS)
    // Room for every stream plus a read-back per transfer, so steady state allocates nothing.
    this.#buffers = new BufferPool(this.#pieceSize, 2 * (init.registryStreams ?? DEFAULT_REGISTRY_STREAMS))
    this.#log = components.logger.child({ component: 'fetch' })
    this.#peerDepth = init.peerDepth ?? 4
    this.#claimTtlMs = init.claimTtlMs
    this.#swarmPolicy = {
      ...(init.registryFetchers !== undefined && { registryFetchers: init.registryFetchers }),
      ...(init.starvingTakesAny !== undefined && { starvingTakesAny: init.starvingTakesAny })
    }
    this.#download = init.download
  }

  async start(): Promise<void> {}

  /** Aborts transfers in flight; their held pieces stay in the store for a resume. */
  async stop(): Promise<void> {
    for (const t of this.#live.values()) t.abort('agent stopping')
    await Promise.allSettled([...this.#live.values()].map((t) => t.run()))
  }

  /** Ensures the blob is complete and verified in the store; returns its record. */
  async fetch(req: BlobRequest, options: FetchBlobOptions = {}, retries = 2): Promise<BlobInfo> {
    parseDigest(req.digest)
    const existing = await this.#c.store.stat(req.digest, options)
    if (existing?.complete) {
      await this.#c.store.touch(req.digest)
      await this.#recordAccess(req, options, true)
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
    await this.#joinedAccess(req, options)
    const off = options.onProgress ? transfer.onProgress(options.onProgress) : undefined
    try {
      if (options.onProgress) options.onProgress(transfer.progress())
      return await raceSignal(transfer.run(), options.signal)
    } catch (err) {
      // Peers forged pieces: they are banned and the blob is dropped; go again without them.
      if (!transfer.retryable || retries <= 0 || options.signal?.aborted) throw err
      await transfer.run().catch(() => undefined)
      await this.#transfers.get(req.digest)?.catch(() => undefined)
      return this.fetch(req, options, retries - 1)
    } finally {
      off?.()
    }
  }

  /**
   * Ensures the pieces covering `range` are held from a source this node trusts (fetched first,
   * ahead of the rest of the blob) and returns the blob's record. The rest keeps coming in the
   * background.
   */
  async fetchRange(req: BlobRequest, range: ByteRange, options: AbortOptions = {}): Promise<BlobInfo> {
    parseDigest(req.digest)
    const existing = await this.#c.store.stat(req.digest, options)
    if (existing?.complete) {
      checkRange(range, existing.size)
      await this.#recordAccess(req, options, true)
      return existing
    }
    const transfer = await this.#transfer(req, options)
    await this.#joinedAccess(req, options)
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

  /**
   * Records in the store what this request knows of the blob's access: private when its registry
   * takes credentials, and the key of the manifest that named it. A complete blob with a new key
   * is advertised under it, so peers with that manifest find this node.
   */
  async #recordAccess(req: BlobRequest, options: AbortOptions, complete = false): Promise<void> {
    const isPrivate = this.#isPrivate(req)
    if (!isPrivate && req.accessKey === undefined) return
    await this.#c.store.grantAccess(
      req.digest,
      { private: isPrivate, ...(req.accessKey && { key: req.accessKey }) },
      options
    )
    if (!complete) return
    const access = await this.#c.store.access(req.digest, options)
    if (access?.private && req.accessKey) {
      this.#c.peers?.announce(req.digest, { private: true, keys: [req.accessKey] })
    }
  }

  /**
   * A request that joined a transfer another one started adds what it knows of the blob. The
   * transfer may have failed and dropped the blob meanwhile: that failure is the one to report.
   */
  async #joinedAccess(req: BlobRequest, options: AbortOptions): Promise<void> {
    await this.#recordAccess(req, options).catch((err: unknown) =>
      this.#log.debug({ digest: req.digest, err: (err as Error).message }, 'access not recorded')
    )
  }

  /** Blobs of a registry we hold credentials for are private (docs/decisions/0011-private-blobs.md). */
  #isPrivate(req: BlobRequest): boolean {
    return this.#c.upstreams.resolve(req.registry).credentialed === true
  }

  #transfer(req: BlobRequest, options: AbortOptions): Promise<BlobTransfer> {
    let pending = this.#transfers.get(req.digest)
    if (pending === undefined) {
      pending = this.#open(req, options)
      this.#transfers.set(req.digest, pending)
      pending.then(
        (t) => {
          t.run().then(
            () => this.#forget(req.digest),
            () => this.#forget(req.digest)
          )
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

  async #open(req: BlobRequest, options: AbortOptions): Promise<BlobTransfer> {
    const upstream = this.#c.upstreams.resolve(req.registry)
    const isPrivate = this.#isPrivate(req)
    let known = await this.#c.store.stat(req.digest, options)
    if (known && !known.complete && req.size !== undefined && req.size !== known.size) {
      // The partial blob was begun from another descriptor that gave another size. Neither is
      // verified until the blob is, and keeping the first would fail every later request: one
      // manifest lying about a shared layer's size would block it on this node for good.
      this.#log.warn(
        { digest: req.digest, size: req.size, partialSize: known.size },
        'descriptors disagree on a partial blob size; starting it again'
      )
      await this.#c.store.delete(req.digest, options)
      known = undefined
    }
    const peers = this.#c.peers?.join(req.digest, {
      ...(req.size !== undefined && { size: req.size }),
      accessKey: req.accessKey,
      private: isPrivate
    })
    try {
      // A blob's size comes from its descriptor. Alone, pieces have the configured size; in a
      // swarm, a size that depends on the blob's size only (the configured one is the cap), as
      // on every node. Only a blob of unknown size asks the swarm (then the seed) for it.
      const geometry =
        known ??
        (req.size !== undefined
          ? {
              size: req.size,
              pieceSize: peers ? swarmPieceSize(req.size, this.#pieceSize) : this.#pieceSize
            }
          : await peers?.ready(options))
      const size =
        geometry?.size ?? req.size ?? (await upstream.statBlob(req.repository, req.digest, options)).size
      const info = await this.#c.store.begin(
        req.digest,
        {
          size,
          pieceSize: geometry?.pieceSize ?? this.#pieceSize,
          mediaType: req.mediaType,
          private: isPrivate
        },
        options
      )
      // Before the transfer is published: peers meet the blob's access from its first piece.
      await this.#recordAccess(req, options)
      const held = await this.#c.store.pieces(req.digest, options)
      if (held.length > 0) this.#log.info({ digest: req.digest, held: held.length }, 'resuming partial blob')
      const transfer = new BlobTransfer(
        {
          store: this.#c.store,
          upstream,
          clock: this.#c.clock,
          logger: this.#log,
          registryStreams: this.#streams,
          buffers: this.#buffers,
          peers,
          download: this.#download,
          ...(this.#c.metrics && { metrics: this.#c.metrics })
        },
        {
          info,
          repository: req.repository,
          held,
          concurrency: this.#concurrency,
          peerDepth: this.#peerDepth,
          ...(this.#claimTtlMs !== undefined && { claimTtlMs: this.#claimTtlMs }),
          ...this.#swarmPolicy,
          priority: this.#transferSeq++
        }
      )
      transfer.run().then(
        () => peers?.leave(true),
        () => peers?.leave(false)
      )
      this.#live.set(req.digest, transfer)
      return transfer
    } catch (err) {
      peers?.leave(false)
      throw err
    }
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
