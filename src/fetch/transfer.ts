import { createHash, type Hash } from 'node:crypto'
import { setMaxListeners } from 'node:events'
import type { Logger } from 'pino'
import type { ShoalMetrics } from '../api/metrics.ts'
import { steadyNow } from '../clock.ts'
import {
  BUSY_BACKOFF_MS,
  DEFAULT_CLAIM_TTL_MS,
  DEFAULT_REGISTRY_FETCHERS,
  DEFAULT_STARVING_TAKES_ANY,
  DEFAULT_SWARM_PATIENCE_MS
} from '../constants.ts'
import { sha256Hex } from '../content/digest.ts'
import { pieceCount, pieceRange } from '../content/pieces.ts'
import {
  AbortedError,
  DigestMismatchError,
  PieceBusyError,
  SizeMismatchError,
  toShoalError
} from '../errors.ts'
import type { Clock } from '../interface/clock.ts'
import type { BlobPeers, LiveBlob, LiveBlobEvent, PeerBlobSession } from '../interface/peers.ts'
import type { BlobInfo, BlobStore, Lease, PieceInfo, PieceSource } from '../interface/store.ts'
import type { Upstream } from '../interface/upstream.ts'
import { shuffle } from '../shuffle.ts'
import type { BufferPool } from './buffer-pool.ts'
import type { PickState } from './piece-picker.ts'
import type { PriorityLimit } from './priority-limit.ts'
import { assignRegistryPieces, planRequests } from './request-plan.ts'
import type { TokenBucket } from './token-bucket.ts'

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
  /** The blob's swarm; without it every piece comes from the seed. */
  peers?: BlobPeers | undefined
  /** Paces what this node downloads, from peers and from the registry. */
  download?: TokenBucket | undefined
  metrics?: ShoalMetrics
}

export interface BlobTransferInit {
  info: BlobInfo
  repository: string
  /** Pieces already held (resume), with their hashes. */
  held: Iterable<Pick<PieceInfo, 'index' | 'sha256' | 'source'>>
  /** Parallel Range requests to the registry for this blob. */
  concurrency: number
  /** Requests in flight per peer. Default 4. */
  peerDepth?: number
  /** How long one piece request to a peer may take. Default 30 s. */
  peerRequestTimeoutMs?: number
  /** How long a peer's `fetching` claim keeps this node off the piece. Default 15 s. */
  claimTtlMs?: number
  /** Without progress for this long, the registry may take any unclaimed piece. Default 60 s. */
  swarmPatienceMs?: number
  /** Members of the swarm that take pieces from the registry. Default 4 (decision 12). */
  registryFetchers?: number
  /** With nothing to ask of peers, the registry may take any unclaimed piece. Default false. */
  starvingTakesAny?: boolean
  /** Rank for registry streams: lower goes first (the fetcher numbers transfers as they start). */
  priority?: number
}

/** A piece request in flight. */
interface Flight {
  /** A peer id, or `registry`. */
  source: string
  abort: AbortController
  /** When it was launched (the transfer's clock). */
  started: number
  /** When peers last heard this node's claim on the piece (registry flights). */
  claimed?: number
}

const REGISTRY = 'registry'
// Timeouts and dead sessions a peer may cause in one transfer before it is no longer asked.
const MAX_STRIKES = 2
// While waiting on peers (claims, busy sessions) the schedule is re-examined this often.
const TICK_MS = 200
// Under a download cap, peer requests in flight carry at most this many seconds of the link.
const PEER_QUEUE_SECONDS = 2
// A member seen this long without a claim on any piece is taken to be idle (see `#idleOwners`).
const OWNER_GRACE_MS = 2_000
// A peer that answered `PIECE_BUSY` is not asked again for this long.
// A registry request younger than this gives way to a peer's claim on the same piece.
const YIELD_WINDOW_MS = 500

/**
 * Brings one blob into the store, piece by piece, from many sources at once: peers of the blob's
 * swarm (each piece checked against the hash its peer vouched for) and the seed registry by HTTP
 * Range (each piece hashed here: the registry is the root of trust). `piece-picker.ts` decides
 * what to ask whom. Every piece is written durably before it counts; the whole blob is hashed
 * in order as pieces land and checked against its digest before the store marks it complete.
 *
 * While it runs the transfer is a `LiveBlob`: peers may fetch the pieces it holds, and hear of
 * each new one (with its hash) and of each piece it starts taking from the registry.
 *
 * When the whole-blob check fails and peers supplied pieces, the pieces they vouched for are
 * fetched again from the registry and compared: every peer whose piece differs is banned, the
 * blob is dropped, and `retryable` tells the fetcher to go again (without them).
 */
export class BlobTransfer implements LiveBlob {
  readonly digest: string
  readonly size: number
  readonly pieceSize: number
  readonly count: number
  readonly startedAt: number
  /** True when the transfer failed because peers forged pieces (they are banned now). */
  retryable = false
  readonly #c: BlobTransferComponents
  readonly #repository: string
  readonly #concurrency: number
  readonly #peerDepth: number
  readonly #maxPeerFlights: number
  readonly #peerRequestTimeoutMs: number
  readonly #claimTtlMs: number
  readonly #patienceMs: number
  readonly #registryFetchers: number
  readonly #starvingTakesAny: boolean
  /** When each peer was first seen among this transfer's sessions. */
  readonly #firstSeen = new Map<string, number>()
  /** Peers that answered `PIECE_BUSY`, and until when (steady clock) they are not asked again. */
  readonly #busyUntil = new Map<string, number>()
  readonly #rank: number
  readonly #registryStart: number
  /** Held pieces: index to hash. */
  readonly #held = new Map<number, string>()
  /** Where each held piece came from: the peer that vouched for it, or undefined. */
  readonly #voucher = new Map<number, string>()
  readonly #trusted = new Set<number>()
  readonly #missing = new Set<number>()
  readonly #flights = new Map<number, Flight[]>()
  readonly #landing = new Set<number>()
  readonly #peerLoad = new Map<string, number>()
  readonly #strikes = new Map<string, number>()
  readonly #banned = new Set<string>()
  #registryLoad = 0
  /** Rendezvous owners of the pieces for one set of members (see `#owns`). */
  #owners: { key: string; owner: string[] } | undefined
  #registryLanded = 0
  #swarmReady = false
  readonly #priority: number[] = []
  readonly #waiters = new Set<{ pieces: number[]; resolve: () => void; reject: (e: Error) => void }>()
  readonly #listeners = new Set<(p: BlobProgress) => void>()
  readonly #liveListeners = new Set<(e: LiveBlobEvent) => void>()
  readonly #abort = abortController()
  readonly #fetched: Partial<Record<PieceSource, number>> = {}
  readonly #resumed: number
  readonly #registrySource: PieceSource
  #lastProgress: number
  // Whole-blob digest, computed in piece order as pieces land, so completion costs no re-read.
  readonly #hash: Hash = createHash('sha256')
  #hashedUpTo = 0
  #hashChain: Promise<void> = Promise.resolve()
  #failure: Error | undefined
  #done: Promise<BlobInfo> | undefined
  #settle: { resolve: () => void; reject: (e: Error) => void } | undefined
  #tick: NodeJS.Timeout | undefined

  constructor(components: BlobTransferComponents, init: BlobTransferInit) {
    this.#c = components
    this.digest = init.info.digest
    this.size = init.info.size
    this.pieceSize = init.info.pieceSize
    this.count = pieceCount(this.size, this.pieceSize)
    this.#repository = init.repository
    this.#concurrency = init.concurrency
    this.#peerDepth = init.peerDepth ?? 4
    // Under a download cap, requests to peers are bounded by what the link carries in a couple
    // of seconds: more would only queue, and a registry piece (a claim the crowd waits on) would
    // queue behind them.
    const rate = components.download?.rate
    this.#maxPeerFlights =
      rate === undefined
        ? Number.POSITIVE_INFINITY
        : Math.max(2, Math.ceil((PEER_QUEUE_SECONDS * rate) / this.pieceSize))
    this.#peerRequestTimeoutMs = init.peerRequestTimeoutMs ?? 30_000
    this.#claimTtlMs = init.claimTtlMs ?? DEFAULT_CLAIM_TTL_MS
    this.#patienceMs = init.swarmPatienceMs ?? DEFAULT_SWARM_PATIENCE_MS
    this.#registryFetchers = init.registryFetchers ?? DEFAULT_REGISTRY_FETCHERS
    this.#starvingTakesAny = init.starvingTakesAny ?? DEFAULT_STARVING_TAKES_ANY
    this.#rank = init.priority ?? 0
    this.#registrySource = components.upstream.kind === 'registry' ? 'registry' : 'oci-layout'
    for (let i = 0; i < this.count; i++) this.#missing.add(i)
    let resumed = 0
    for (const p of init.held) {
      this.#held.set(p.index, p.sha256)
      this.#missing.delete(p.index)
      if (p.source !== 'peer') this.#trusted.add(p.index)
      resumed += this.#len(p.index)
    }
    this.#resumed = resumed
    // Alone, the registry walks the blob in order; in a swarm each node starts somewhere else.
    this.#registryStart = components.peers ? Math.floor(Math.random() * Math.max(this.count, 1)) : 0
    this.startedAt = components.clock.now()
    this.#lastProgress = this.#steady()
  }

  /** True when peers may have supplied pieces of this transfer. */
  get usedPeers(): boolean {
    return this.#voucher.size > 0
  }

  /** Starts the transfer once; every caller gets the same promise. */
  run(): Promise<BlobInfo> {
    this.#done ??= this.#run()
    return this.#done
  }

  /** Aborts the transfer (agent stopping). Held pieces stay for a later resume. */
  abort(reason = 'transfer aborted'): void {
    this.#fail(new AbortedError(reason))
  }

  /** Pieces held so far. */
  get piecesHeld(): number {
    return this.#held.size
  }

  /** True when piece `i` is verified and durable in the store. */
  has(i: number): boolean {
    return this.#held.has(i)
  }

  // LiveBlob: what peers see of this transfer.

  hashOf(index: number): string | undefined {
    return this.#held.get(index)
  }

  held(): Iterable<[number, string]> {
    return this.#held.entries()
  }

  *fetching(): Iterable<number> {
    for (const [i, flights] of this.#flights) if (flights.some((f) => f.source === REGISTRY)) yield i
  }

  onEvent(fn: (e: LiveBlobEvent) => void): () => void {
    this.#liveListeners.add(fn)
    return () => this.#liveListeners.delete(fn)
  }

  /** Progress listener; returns the function that removes it. */
  onProgress(fn: (p: BlobProgress) => void): () => void {
    this.#listeners.add(fn)
    return () => this.#listeners.delete(fn)
  }

  /**
   * Resolves once all `pieces` are held from a source this node trusts before the blob check
   * (the registry), or once the whole blob is verified; moves them to the front of the queue.
   */
  async waitFor(pieces: number[], signal?: AbortSignal): Promise<void> {
    const missing = pieces.filter((i) => !this.#trusted.has(i))
    if (missing.length === 0) return
    if (this.#failure) throw this.#failure
    this.#priority.unshift(...missing)
    this.#pump()
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
      bytesHeld: [...this.#held.keys()].reduce((n, i) => n + this.#len(i), 0),
      fetched: { ...this.#fetched },
      resumed: this.#resumed
    }
  }

  async #run(): Promise<BlobInfo> {
    const lease: Lease = this.#c.store.acquire(this.digest)
    this.#c.metrics?.activeTransfers.inc()
    const peers = this.#c.peers
    const offChange = peers?.onChange(() => this.#pump())
    let complete = false
    try {
      peers?.publish(this)
      this.#scheduleHashing()
      await new Promise<void>((resolve, reject) => {
        this.#settle = { resolve, reject }
        if (peers) {
          this.#tick = setInterval(() => this.#pump(), TICK_MS)
          peers.ready({ signal: this.#abort.signal }).finally(() => {
            this.#swarmReady = true
            this.#pump()
          })
        }
        this.#pump()
      })
      const info = await this.#finish()
      complete = true
      return info
    } catch (err) {
      const e = toShoalError(err)
      this.#fail(e)
      throw this.#failure ?? e
    } finally {
      clearInterval(this.#tick)
      offChange?.()
      this.#emitLive({ type: 'ended', complete })
      this.#liveListeners.clear()
      for (const w of this.#waiters) {
        if (complete) w.resolve()
        else w.reject(this.#failure ?? new AbortedError('transfer ended'))
      }
      this.#waiters.clear()
      this.#c.metrics?.activeTransfers.dec()
      lease.release()
    }
  }

  #fail(err: Error): void {
    this.#failure ??= err
    this.#abort.abort(this.#failure)
    this.#settle?.reject(this.#failure)
  }

  /** Now on the transfer's steady clock: ages of flights, claims and progress. */
  #steady(): number {
    return this.#c.clock.steady?.() ?? this.#c.clock.now()
  }

  #len(i: number): number {
    const r = pieceRange(i, this.size, this.pieceSize)
    return r.end - r.start
  }

  /** Fills every free slot (each peer's, the registry's) with a piece to fetch. */
  #pump(): void {
    if (this.#failure || this.#settle === undefined) return
    if (this.#missing.size === 0) {
      if (this.#flights.size === 0 && this.#landing.size === 0) this.#settle.resolve()
      return
    }
    const now = this.#steady()
    const sessions = (this.#c.peers?.sessions() ?? []).filter(
      (s) =>
        s.size === this.size &&
        s.pieceSize === this.pieceSize &&
        (this.#strikes.get(s.peerId) ?? 0) < MAX_STRIKES
    )
    const state: PickState = {
      missing: this.#missing,
      inFlight: this.#inFlightSources(),
      priority: this.#priority,
      heldCount: this.#held.size,
      count: this.count,
      peers: sessions,
      // Peers' claims are stamped on the same steady clock (piece-client.ts).
      now: steadyNow(),
      claimTtlMs: this.#claimTtlMs,
      impatient: now - this.#lastProgress > this.#patienceMs,
      registryStart: this.#registryStart,
      random: Math.random
    }
    this.#yieldToLowerClaims(sessions, now, state.now)
    this.#renewClaims(now)
    const plan = planRequests({
      state,
      sessions: shuffle(sessions),
      peerLoad: (s) => this.#peerLoad.get(s.peerId) ?? 0,
      capacity: (s) => ((this.#busyUntil.get(s.peerId) ?? 0) > now ? 0 : Number.POSITIVE_INFINITY),
      peerDepth: this.#peerDepth,
      maxPeerFlights: this.#maxPeerFlights,
      registryLoad: this.#registryLoad,
      registryWindow: this.#registryWindow(),
      // The registry's pieces are split among the peers known on the blob (see `#owns`); a
      // node with nothing to do from peers may take any piece nobody holds or claims.
      owns: () =>
        this.#owns(
          this.#c.peers?.swarmMembers?.() ?? sessions.map((s) => s.peerId),
          this.#idleOwners(sessions, now, state.now)
        ),
      starvingTakesAny: this.#starvingTakesAny
    })
    for (const r of plan.requests) this.#launch(r.index, r.peer)
  }

  /**
   * Which pieces this node is the one to take from the registry among itself and `members`
   * (`assignRegistryPieces`: of the `registryFetchers` members ranked highest for the blob, the
   * one with the highest hash of (blob, piece, peer id)). Nodes that know the same members split
   * the blob the same way before any claim reaches them. Recomputed when members change.
   */
  #owns(members: readonly string[], idle: ReadonlySet<string>): ((index: number) => boolean) | undefined {
    const self = this.#c.peers?.localPeerId
    if (self === undefined || members.length === 0) return undefined
    const all = [...new Set([self, ...members])].sort()
    const key = all.join(' ')
    if (this.#owners?.key !== key) {
      const hash = (text: string) => createHash('sha256').update(text).digest('hex')
      const owner = assignRegistryPieces(
        all,
        this.count,
        this.#registryFetchers,
        (id) => hash(`${this.digest} ${id}`),
        (id, i) => hash(`${this.digest} ${i} ${id}`)
      )
      this.#owners = { key, owner }
    }
    const owner = this.#owners.owner
    // The share of a member that shows no sign of fetching it is taken over (see `#idleOwners`).
    return (i) => owner[i] === self || idle.has(owner[i] as string)
  }

  /**
   * Peers seen for a while now that claim no piece: a member that does not fetch its share of
   * the registry's pieces (an older agent, a stalled one) would otherwise leave those pieces to
   * this node's patience. `claimNow` is the clock the peers' claims are stamped with.
   */
  #idleOwners(sessions: readonly PeerBlobSession[], now: number, claimNow: number): Set<string> {
    const idle = new Set<string>()
    for (const s of sessions) {
      const seen = this.#firstSeen.get(s.peerId)
      if (seen === undefined) {
        this.#firstSeen.set(s.peerId, now)
        continue
      }
      if (now - seen < OWNER_GRACE_MS) continue
      let claiming = false
      for (let i = 0; i < this.count && !claiming; i++) {
        const since = s.fetchingSince(i)
        claiming = since !== undefined && claimNow - since < this.#claimTtlMs
      }
      if (!claiming) idle.add(s.peerId)
    }
    return idle
  }

  /**
   * Registry requests allowed in flight now. Alone, all of them. In a swarm, none until the first
   * round of peer discovery is over (so the claims of peers fetching the same blob are known),
   * then one more for each piece that came from the registry (a slow start): nodes of a cold
   * swarm that start together would otherwise all take the same pieces before they hear of
   * each other.
   */
  #registryWindow(): number {
    if (this.#c.peers === undefined) return this.#concurrency
    if (!this.#swarmReady) return 0
    return Math.min(this.#concurrency, 1 + this.#registryLanded)
  }

  #inFlightSources(): Map<number, string[]> {
    const m = new Map<number, string[]>()
    for (const [i, flights] of this.#flights)
      m.set(
        i,
        flights.map((f) => f.source)
      )
    return m
  }

  /**
   * Two nodes that started taking the same piece from the registry before hearing of each other:
   * the one with the higher peer id gives way (both see the same pair, so exactly one does), but
   * only while its request is young; past that, finishing costs the registry less than starting
   * over elsewhere.
   */
  #yieldToLowerClaims(sessions: PeerBlobSession[], now: number, claimNow: number): void {
    const self = this.#c.peers?.localPeerId
    if (self === undefined) return
    // Only a live claim counts: a stale one (a peer that claimed and went quiet) would make this
    // node give up every registry request for the piece while it is young, again and again.
    const claims = (s: PeerBlobSession, i: number) => {
      const since = s.fetchingSince(i)
      return since !== undefined && claimNow - since < this.#claimTtlMs
    }
    for (const [i, flights] of this.#flights) {
      if (this.#priority.includes(i)) continue
      const mine = flights.find((f) => f.source === REGISTRY)
      if (mine === undefined || mine.abort.signal.aborted || now - mine.started > YIELD_WINDOW_MS) continue
      const lower = sessions.some((s) => s.peerId < self && claims(s, i) && !s.has(i))
      if (lower) {
        this.#c.logger.debug({ digest: this.digest, index: i }, 'registry piece left to a peer')
        mine.abort.abort(new AbortedError(`piece ${i} is being fetched by a peer`))
      }
    }
  }

  /**
   * Tells peers again of the registry pieces still on their way: a claim lasts `claimTtlMs` at
   * the peers, and a slow registry (or a piece waiting for the download cap) outlives it, after
   * which other nodes would take the same piece from the registry too.
   */
  #renewClaims(now: number): void {
    for (const [i, flights] of this.#flights) {
      for (const f of flights) {
        if (f.source !== REGISTRY || f.abort.signal.aborted) continue
        if (now - (f.claimed ?? f.started) < this.#claimTtlMs / 3) continue
        f.claimed = now
        this.#emitLive({ type: 'fetching', index: i })
      }
    }
  }

  #launch(i: number, peer: PeerBlobSession | undefined): void {
    const source = peer?.peerId ?? REGISTRY
    const started = this.#steady()
    const flight: Flight = { source, abort: abortController(), started }
    const signal = AbortSignal.any([this.#abort.signal, flight.abort.signal])
    const list = this.#flights.get(i)
    if (list === undefined) this.#flights.set(i, [flight])
    else list.push(flight)
    if (peer) this.#peerLoad.set(source, (this.#peerLoad.get(source) ?? 0) + 1)
    else {
      this.#registryLoad++
      this.#emitLive({ type: 'fetching', index: i })
      this.#c.logger.debug(
        { digest: this.digest, index: i, peers: this.#c.peers?.sessions().length ?? 0 },
        'piece from the registry'
      )
    }
    const work = peer ? this.#fromPeer(i, peer, signal) : this.#fromRegistry(i, signal)
    work
      .then(
        () => this.#observe(peer ? 'peer' : this.#registrySource, started),
        (err: unknown) => this.#onFlightError(i, peer, flight, err)
      )
      .finally(() => {
        const left = (this.#flights.get(i) ?? []).filter((f) => f !== flight)
        if (left.length === 0) this.#flights.delete(i)
        else this.#flights.set(i, left)
        if (peer) this.#peerLoad.set(source, (this.#peerLoad.get(source) ?? 1) - 1)
        else this.#registryLoad--
        this.#pump()
      })
  }

  #observe(source: PieceSource, started: number): void {
    this.#c.metrics?.pieceSeconds.observe({ source }, (this.#steady() - started) / 1000)
  }

  #onFlightError(i: number, peer: PeerBlobSession | undefined, flight: Flight, err: unknown): void {
    if (this.#failure) return
    // Given way to a peer, or lost an endgame race: not a failure.
    if (flight.abort.signal.aborted) return
    if (peer === undefined) {
      this.#fail(toShoalError(err))
      return
    }
    const e = toShoalError(err)
    if (e instanceof PieceBusyError) {
      // Not a fault: the peer uploads all it allows. Ask the others, and it again shortly.
      this.#busyUntil.set(peer.peerId, this.#steady() + BUSY_BACKOFF_MS)
      setTimeout(() => this.#pump(), BUSY_BACKOFF_MS + 1)
      return
    }
    if (e instanceof DigestMismatchError || e instanceof SizeMismatchError) {
      if (!this.#banned.has(peer.peerId)) this.#c.peers?.ban(peer.peerId, 'bad-piece')
      this.#banned.add(peer.peerId)
      return
    }
    const strikes = (this.#strikes.get(peer.peerId) ?? 0) + 1
    this.#strikes.set(peer.peerId, strikes)
    this.#c.logger.debug(
      { digest: this.digest, index: i, peer: peer.peerId, err: e.message },
      'peer piece failed'
    )
    // No longer asked: its other requests go back to the pool at once. Left to run, each would
    // hold its piece (from the registry too) until its own timeout, a stalled peer's 30 s.
    if (strikes === MAX_STRIKES) {
      for (const flights of this.#flights.values()) {
        for (const f of flights) {
          if (f.source === peer.peerId)
            f.abort.abort(new AbortedError(`peer ${peer.peerId} is no longer asked`))
        }
      }
    }
  }

  async #fromPeer(i: number, peer: PeerBlobSession, signal: AbortSignal): Promise<void> {
    await this.#c.download?.take(this.#len(i), signal)
    const data = await peer.fetchPiece(i, { signal, timeoutMs: this.#peerRequestTimeoutMs })
    // Checked against the peer's hash by the session; the peer vouches for it.
    await this.#land(i, data, peer.hashOf(i) as string, 'peer', peer.peerId)
  }

  async #fromRegistry(i: number, signal: AbortSignal): Promise<void> {
    const range = pieceRange(i, this.size, this.pieceSize)
    const whole = range.start === 0 && range.end === this.size
    const into = this.#c.buffers?.acquire(range.end - range.start)
    try {
      const get = async () => {
        // Urgent: the crowd waits on the pieces this node claimed from the registry.
        await this.#c.download?.take(range.end - range.start, signal, { urgent: true })
        return this.#c.upstream.fetchBlob(
          this.#repository,
          this.digest,
          whole ? { signal, into } : { range, signal, into }
        )
      }
      // A blob of one piece (a config, a small layer) skips the queue for registry streams:
      // the runtime usually waits on it before anything else, and it costs one short request.
      const data = this.count <= 1 ? await get() : await this.#c.registryStreams.run(this.#rank, get)
      // The seed is the root of trust: a piece from it is hashed here, and that hash is what
      // this node announces. The whole-blob digest check at the end vouches for it.
      await this.#land(i, data, sha256Hex(data), this.#registrySource, undefined)
    } finally {
      if (into) this.#c.buffers?.release(into)
    }
  }

  /** Writes a verified piece, once, and tells everyone who waits for it. */
  async #land(
    i: number,
    data: Uint8Array,
    sha256: string,
    source: PieceSource,
    voucher?: string
  ): Promise<void> {
    if (this.#held.has(i) || this.#landing.has(i)) return
    this.#landing.add(i)
    try {
      await this.#c.store.putPiece(this.digest, i, data, { sha256, source }, { signal: this.#abort.signal })
    } finally {
      this.#landing.delete(i)
    }
    this.#held.set(i, sha256)
    this.#missing.delete(i)
    if (voucher === undefined) {
      this.#trusted.add(i)
      this.#registryLanded++
    } else {
      this.#voucher.set(i, voucher)
    }
    this.#lastProgress = this.#steady()
    // The other sources of this piece (endgame) are no longer needed.
    for (const f of this.#flights.get(i) ?? []) f.abort.abort(new AbortedError(`piece ${i} arrived`))
    // The piece the whole-blob hash needs next is hashed now, while it is in memory; any other
    // is read back from the store (the page cache) when its turn comes.
    if (i === this.#hashedUpTo) {
      this.#hash.update(data)
      this.#hashedUpTo++
    }
    this.#fetched[source] = (this.#fetched[source] ?? 0) + data.length
    this.#c.metrics?.bytesFetched.inc({ source }, data.length)
    this.#scheduleHashing()
    this.#emitLive({ type: 'have', index: i, sha256 })
    for (const w of this.#waiters) {
      if (w.pieces.every((p) => this.#trusted.has(p))) {
        this.#waiters.delete(w)
        w.resolve()
      }
    }
    const p = this.progress()
    for (const fn of this.#listeners) fn(p)
  }

  #emitLive(e: LiveBlobEvent): void {
    for (const fn of this.#liveListeners) fn(e)
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
      this.#c.metrics?.verifyFailures.inc({
        kind: 'blob',
        source: this.usedPeers ? 'peer' : this.#registrySource
      })
      this.#c.logger.warn({ digest: this.digest, actual }, 'blob failed its digest check')
      const culprits = this.usedPeers ? await this.#traceForgedPieces() : []
      await this.#c.store.delete(this.digest)
      this.retryable = culprits.length > 0
      const from = culprits.length > 0 ? `peers ${culprits.join(', ')} (now banned)` : this.#c.upstream.name
      throw new DigestMismatchError(
        `blob ${this.digest} from ${from} failed verification (bytes hash to ${actual}); nothing was kept`
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

  /**
   * Fetches again from the registry every piece a peer vouched for and compares: each peer whose
   * piece differs is banned. Costs at most one blob of registry traffic, and only when a blob
   * failed its check.
   */
  async #traceForgedPieces(): Promise<string[]> {
    const culprits = new Set<string>()
    for (const [i, peerId] of this.#voucher) {
      const range = pieceRange(i, this.size, this.pieceSize)
      const get = () => this.#c.upstream.fetchBlob(this.#repository, this.digest, { range })
      const data = await this.#c.registryStreams.run(this.#rank, get)
      if (sha256Hex(data) !== this.#held.get(i)) culprits.add(peerId)
    }
    for (const peerId of culprits) {
      this.#c.logger.warn({ digest: this.digest, peer: peerId }, 'peer vouched for a forged piece: banned')
      this.#c.peers?.ban(peerId, 'forged-piece')
    }
    return [...culprits]
  }
}
