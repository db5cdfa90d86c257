/**
 * The piece protocol over libp2p streams. One stream is one session about one blob: the client
 * sends `hello {digest}`; the server describes what it holds (a complete blob's `piece-list` and
 * `bitfield`, or a partial blob's geometry and a `have` per piece, hash included) or answers
 * `reject` / `busy` and closes; then the client sends `request {index}` frames, as many in flight
 * as it likes, and the server answers each with a `piece {index, data}` in request order, plus
 * `have` and `fetching` news while its own transfer runs. `cancel` drops a request still queued.
 * The client end is `ClientSession` (piece-client.ts), the server end `ServedSession`
 * (piece-server.ts); this module owns both sets, the upload slots and the bans.
 */
import '../polyfill.ts'
import type { Connection, IdentifyResult, Stream } from '@libp2p/interface'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'
import type { ShoalMetrics } from '../api/metrics.ts'
import { second } from '../constants.ts'
import { accessProof } from '../content/access.ts'
import { isDigest } from '../content/digest.ts'
import {
  AbortedError,
  InvalidDigestError,
  type ShoalError,
  ShoalError as ShoalErrorClass,
  UpstreamTimeoutError,
  UpstreamUnavailableError
} from '../errors.ts'
import type { TokenBucket } from '../fetch/token-bucket.ts'
import type { AbortOptions, Startable } from '../interface/common.ts'
import type { LiveBlob } from '../interface/peers.ts'
import type { BlobStore } from '../interface/store.ts'
import type { PeerBans } from './peer-bans.ts'
import { ClientSession, type ClientStats } from './piece-client.ts'
import { ServedSession, type ServerStats } from './piece-server.ts'
import { Deadline, errorMessage, refuseBusy, refuseDraining } from './stream-frames.ts'
import type { SwarmNode } from './swarm-node.ts'
import { DEFAULT_PROTOCOL_PREFIX } from './swarm-node.ts'
import { MAX_EXCHANGED_PEERS, MAX_PEER_ADDRESSES, type WirePeer } from './wire.ts'

export { ClientSession, type FetchPieceOptions, PeerBusyError } from './piece-client.ts'

/** The piece protocol's id after the swarm's protocol prefix: `/shoal/pieces/1.0.0` by default. */
export const PIECE_PROTOCOL_SUFFIX = '/pieces/1.0.0'
/** Inbound sessions served at once by default; further ones get `busy`. */
export const DEFAULT_UPLOAD_SLOTS = 16
/** Default time `openSession` allows for dialling and the hello exchange. */
export const DEFAULT_OPEN_TIMEOUT_MS = 10 * second
/** Default time a piece request may wait for its reply. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 30 * second
/** Default wait a busy server asks for. */
export const DEFAULT_BUSY_RETRY_AFTER_MS = second
// Who asked for a blob this node lacked is remembered this long, for so many blobs and peers.
const ASKER_TTL_MS = 60 * second
const MAX_ASKED_BLOBS = 1024
const MAX_ASKERS_PER_BLOB = 64
// How long a hello for a blob about to be published waits for it.
const EXPECT_WAIT_MS = 3 * second
// Joins to a blob's swarm within this window are told to its clients in one peer exchange.
const PEX_DEBOUNCE_MS = 300
// Peers whose listen addresses are kept for peer exchange.
const MAX_REMEMBERED_ADDRESSES = 4096
// A stopping exchange still answers a racing stream with `busy` (for longer).
const MAX_BUSY_WHEN_STOPPING = 10 * second

/** Collaborators of a `PieceExchange`. */
export interface PieceExchangeComponents {
  node: SwarmNode
  store: BlobStore
  logger: Logger
  /** Peers refused in both directions; a ban cuts their sessions at once. */
  bans?: PeerBans
  /** Counts bytes served to peers, bad pieces, and bans. */
  metrics?: ShoalMetrics
}

/** Configuration of a `PieceExchange`. */
export interface PieceExchangeInit {
  /** Prefix of Shoal's protocols (the same as the swarm node's). Default `/shoal`. */
  protocolPrefix?: string
  /** Inbound sessions served at once; beyond that a session gets `busy` and is closed. Default 16. */
  uploadSlots?: number
  /** Default deadline of `openSession` (dial, hello, what the peer holds), in ms. Default 10 s. */
  openTimeoutMs?: number
  /** Default deadline of one `fetchPiece`, in ms. Default 30 s. */
  requestTimeoutMs?: number
  /** The wait a busy server asks clients for, in ms. Default 1 s. */
  busyRetryAfterMs?: number
  /** Paces the bytes this node uploads to peers (all sessions share it). */
  upload?: TokenBucket | undefined
  /** Pieces uploaded at once across all sessions; further requests get `PIECE_BUSY`. Default: no limit. */
  concurrentUploads?: number | undefined
}

/** Options of `openSession`. */
export interface OpenSessionOptions extends AbortOptions {
  /** The blob's size when known (from its descriptor): a peer declaring another is refused. */
  size?: number | undefined
  /** Deadline for the whole opening, in ms (default: the exchange's `openTimeoutMs`). */
  timeoutMs?: number
  /**
   * The access key of a manifest referencing the blob: the hello carries a proof made with it,
   * bound to this node and the peer, so a peer holding the blob privately may serve it.
   */
  accessKey?: Uint8Array | undefined
}

/** Counters of a `PieceExchange` (for metrics and tests). */
export interface PieceExchangeStats extends ServerStats, ClientStats {}

/** One session this node is serving a peer (for `shoal status`). */
export interface UploadStatus {
  peerId: string
  /** The blob asked for ('' before the peer's hello). */
  digest: string
  piecesServed: number
  bytesServed: number
}

/** A peer to open a session with: its id and multiaddrs (with or without `/p2p/<id>`). */
export interface SessionPeer {
  peerId: string
  addresses: string[]
}

/** Serves what the store holds (and transfers in flight) to peers, and opens sessions to peers. */
export class PieceExchange implements Startable {
  /** Counters since construction. */
  readonly stats: PieceExchangeStats = {
    sessionsServed: 0,
    piecesServed: 0,
    bytesServed: 0,
    partialPiecesServed: 0,
    piecesFetched: 0,
    bytesFetched: 0
  }

  /** The full protocol id, e.g. `/shoal/pieces/1.0.0`. */
  readonly protocol: string
  readonly #node: SwarmNode
  readonly #store: BlobStore
  readonly #metrics: ShoalMetrics | undefined
  readonly #bans: PeerBans | undefined
  readonly #log: Logger
  readonly #init: PieceExchangeInit
  readonly #uploadSlots: number
  /** Pieces being uploaded now, shared by every served session (see `concurrentUploads`). */
  readonly #uploads: { active: number; limit: number } | undefined
  readonly #openTimeoutMs: number
  readonly #requestTimeoutMs: number
  readonly #served = new Set<ServedSession>()
  readonly #outbound = new Set<ClientSession>()
  /** Listen addresses peers announced, by peer id (see `#onIdentify`). */
  readonly #listenAddresses = new Map<string, string[]>()
  /** Pending peer-exchange broadcasts, by blob. */
  readonly #pexTimers = new Map<string, NodeJS.Timeout>()
  readonly #live = new Map<string, LiveBlob>()
  /** Blobs this node has joined but not yet published, with those waiting for them. */
  readonly #expected = new Map<string, Set<(blob: LiveBlob | undefined) => void>>()
  readonly #interest = new Set<(peerId: string, digest: string) => void>()
  /** Peers that recently asked for a blob this node had not joined: they are fetching it. */
  readonly #askers = new Map<string, Map<string, number>>()
  /** Waiting for the last served session to end (see `drain`). */
  readonly #idle = new Set<() => void>()
  #offBan: (() => void) | undefined
  #started = false
  #draining = false

  constructor(components: PieceExchangeComponents, init: PieceExchangeInit = {}) {
    this.#node = components.node
    this.#store = components.store
    this.#metrics = components.metrics
    this.#bans = components.bans
    this.#log = components.logger.child({ component: 'pieces' })
    this.#init = init
    this.protocol = `${init.protocolPrefix ?? DEFAULT_PROTOCOL_PREFIX}${PIECE_PROTOCOL_SUFFIX}`
    this.#uploadSlots = init.uploadSlots ?? DEFAULT_UPLOAD_SLOTS
    this.#uploads =
      init.concurrentUploads === undefined ? undefined : { active: 0, limit: init.concurrentUploads }
    this.#openTimeoutMs = init.openTimeoutMs ?? DEFAULT_OPEN_TIMEOUT_MS
    this.#requestTimeoutMs = init.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS
  }

  /** Inbound sessions being served now. */
  get activeUploads(): number {
    return this.#served.size
  }

  /** Outbound sessions open now. */
  get activeSessions(): number {
    return this.#outbound.size
  }

  /** True once `drain` was called: new inbound sessions hear `PEER_DRAINING`. */
  get draining(): boolean {
    return this.#draining
  }

  /** The sessions being served now. */
  uploads(): UploadStatus[] {
    return [...this.#served].map((s) => ({
      peerId: s.peerId,
      digest: s.digest,
      piecesServed: s.piecesServed,
      bytesServed: s.bytesServed
    }))
  }

  /**
   * Refuses every new inbound session from now on (`reject PEER_DRAINING`, so peers go
   * elsewhere), then waits for the sessions being served to end by themselves, or for `signal`.
   * Resolves with the number of sessions still open (0 when all ended). Sessions this node
   * opens to fetch are not affected.
   */
  async drain(options: AbortOptions = {}): Promise<number> {
    this.#draining = true
    const { signal } = options
    if (this.#served.size > 0 && signal?.aborted !== true) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.#idle.delete(done)
          signal?.removeEventListener('abort', done)
          resolve()
        }
        this.#idle.add(done)
        signal?.addEventListener('abort', done, { once: true })
      })
    }
    return this.#served.size
  }

  /** Registers the protocol handler on the swarm node (which must be started). Idempotent. */
  async start(): Promise<void> {
    if (this.#started) return
    await this.#node.libp2p.handle(this.protocol, (stream, connection) => this.#accept(stream, connection), {
      // Room above the slots, so extra sessions hear `busy` instead of a stream reset.
      maxInboundStreams: Math.max(32, this.#uploadSlots * 2),
      maxOutboundStreams: 64
    })
    this.#offBan = this.#bans?.onBan((peerId, reason) => this.#cut(peerId, reason))
    this.#node.libp2p.addEventListener('peer:identify', this.#onIdentify)
    this.#started = true
  }

  /**
   * Keeps the listen addresses each peer announced (identify), for peer exchange: read from
   * here, not from the peer store, whose reads wait behind the DHT's writes (seconds, in a crowd).
   */
  readonly #onIdentify = (evt: CustomEvent<IdentifyResult>): void => {
    const id = evt.detail.peerId.toString()
    const addresses = evt.detail.listenAddrs
      .map((a) => a.toString())
      .filter((a) => !a.includes('/p2p-circuit') && a.length <= 200)
      .slice(0, MAX_PEER_ADDRESSES)
    this.#listenAddresses.delete(id)
    this.#listenAddresses.set(id, addresses)
    // Bounded: the oldest entry goes first.
    if (this.#listenAddresses.size > MAX_REMEMBERED_ADDRESSES) {
      this.#listenAddresses.delete(this.#listenAddresses.keys().next().value as string)
    }
  }

  /** Unregisters the handler and aborts every open session, both directions. Idempotent. */
  async stop(): Promise<void> {
    const wasStarted = this.#started
    this.#started = false
    this.#offBan?.()
    if (this.#node.started) this.#node.libp2p.removeEventListener('peer:identify', this.#onIdentify)
    for (const t of this.#pexTimers.values()) clearTimeout(t)
    this.#pexTimers.clear()
    const err = new AbortedError('piece exchange stopped')
    for (const s of [...this.#served]) s.abort(err)
    for (const s of [...this.#outbound]) s.abort(err)
    if (wasStarted && this.#node.started) await this.#node.libp2p.unhandle(this.protocol)
  }

  /** Lets peers fetch the pieces of a transfer while it runs; returns the function that stops it. */
  publish(blob: LiveBlob): () => void {
    this.#live.set(blob.digest, blob)
    this.#settleExpected(blob.digest, blob)
    return () => {
      if (this.#live.get(blob.digest) === blob) this.#live.delete(blob.digest)
    }
  }

  /**
   * Announces that a transfer of `digest` is about to be published: a peer asking for it
   * meanwhile waits (a little) instead of hearing `BLOB_UNKNOWN`. Returns the function that
   * withdraws the notice (a transfer that never started).
   */
  expect(digest: string): () => void {
    if (!this.#expected.has(digest)) this.#expected.set(digest, new Set())
    return () => this.#settleExpected(digest, undefined)
  }

  #settleExpected(digest: string, blob: LiveBlob | undefined): void {
    const waiting = this.#expected.get(digest)
    this.#expected.delete(digest)
    for (const fn of waiting ?? []) fn(blob)
  }

  /** This node's transfer of `digest`, waiting up to `ms` when one is expected. */
  #liveBlob(digest: string, ms: number): Promise<LiveBlob | undefined> | LiveBlob | undefined {
    const live = this.#live.get(digest)
    const waiting = this.#expected.get(digest)
    if (live !== undefined || waiting === undefined) return live
    return new Promise((resolve) => {
      const done = (blob: LiveBlob | undefined) => {
        clearTimeout(timer)
        waiting.delete(done)
        resolve(blob)
      }
      const timer = setTimeout(() => done(undefined), ms)
      waiting.add(done)
    })
  }

  /** Peers that asked for `digest` in the last minute while this node had none of it. */
  recentAskers(digest: string): string[] {
    const now = Date.now()
    const askers = this.#askers.get(digest)
    if (askers === undefined) return []
    for (const [peer, at] of askers) if (now - at > ASKER_TTL_MS) askers.delete(peer)
    return [...askers.keys()]
  }

  #noteAsker(peerId: string, digest: string): void {
    let askers = this.#askers.get(digest)
    if (askers === undefined) {
      // Bounded: the oldest blob's askers go first.
      if (this.#askers.size >= MAX_ASKED_BLOBS)
        this.#askers.delete(this.#askers.keys().next().value as string)
      askers = new Map()
      this.#askers.set(digest, askers)
    }
    if (askers.size < MAX_ASKERS_PER_BLOB) askers.set(peerId, Date.now())
  }

  /** Told when a peer opens a session about a blob this node is fetching (it may serve us too). */
  onInterest(fn: (peerId: string, digest: string) => void): () => void {
    this.#interest.add(fn)
    return () => this.#interest.delete(fn)
  }

  /**
   * Opens a session with `peer` about the blob `digest`: dials it, says hello and waits for what
   * the peer holds (checked against `digest` and `options.size`). Throws `BlobUnknownError` when
   * the peer holds none of it and is not fetching it, `PeerBusyError` (code
   * `UPSTREAM_UNAVAILABLE`) when it has no upload slot, `UpstreamUnavailableError` when it cannot
   * be reached or is banned, `UpstreamTimeoutError` past the deadline, `InvalidPieceListError` /
   * `ProtocolViolationError` / `SizeMismatchError` for a bad answer, `AbortedError` when aborted.
   */
  async openSession(
    peer: SessionPeer,
    digest: string,
    options: OpenSessionOptions = {}
  ): Promise<ClientSession> {
    if (!isDigest(digest)) throw new InvalidDigestError(`"${digest}" is not a sha256 digest`)
    if (!this.#started) throw new AbortedError('piece exchange is not started')
    if (this.#bans?.isBanned(peer.peerId)) {
      throw new UpstreamUnavailableError(`peer ${peer.peerId} is banned`)
    }
    const timeoutMs = options.timeoutMs ?? this.#openTimeoutMs
    const deadline = new Deadline(timeoutMs, options.signal)
    const what = `session with ${peer.peerId} about ${digest}`
    const mapError = (err: unknown): ShoalError => {
      if (options.signal?.aborted) return new AbortedError(`${what} aborted`, { cause: err })
      if (deadline.expired) return new UpstreamTimeoutError(`${what}: no answer within ${timeoutMs} ms`)
      if (err instanceof ShoalErrorClass) return err
      return new UpstreamUnavailableError(`${what}: ${errorMessage(err)}`, { cause: err })
    }
    try {
      if (options.signal?.aborted) throw new AbortedError(`${what} aborted`)
      let stream: Stream
      try {
        stream = await this.#node.libp2p.dialProtocol(dialTargets(peer), this.protocol, {
          signal: deadline.signal
        })
      } catch (err) {
        throw mapError(err)
      }
      const key = options.accessKey
      const session = new ClientSession(stream, {
        peerId: peer.peerId,
        digest,
        size: options.size,
        ...(key !== undefined && { proof: accessProof(key, digest, this.#node.peerId, peer.peerId) }),
        requestTimeoutMs: this.#requestTimeoutMs,
        stats: this.stats,
        log: this.#log,
        onClosed: (s) => this.#outbound.delete(s),
        onBadPiece: () => this.#metrics?.verifyFailures.inc({ kind: 'piece', source: 'peer' })
      })
      this.#outbound.add(session)
      try {
        await session.handshake(deadline.signal)
      } catch (err) {
        const mapped = mapError(err)
        session.abort(mapped)
        // A stream that closed before the session listened never reports its close.
        this.#outbound.delete(session)
        throw mapped
      }
      if (!this.#started) {
        const err = new AbortedError('piece exchange stopped')
        session.abort(err)
        throw err
      }
      this.#peersChanged(digest)
      return session
    } finally {
      deadline.clear()
    }
  }

  #accept(stream: Stream, connection: Connection): void {
    const peerId = connection.remotePeer.toString()
    if (this.#bans?.isBanned(peerId)) {
      stream.abort(new UpstreamUnavailableError(`peer ${peerId} is banned`))
      return
    }
    if (this.#draining && this.#started) {
      this.#log.debug({ peer: peerId }, 'draining: refusing a new session')
      refuseDraining(stream)
      return
    }
    if (!this.#started || this.#served.size >= this.#uploadSlots) {
      this.#log.debug({ slots: this.#uploadSlots }, 'no upload slot: answering busy')
      refuseBusy(
        stream,
        this.#started ? (this.#init.busyRetryAfterMs ?? DEFAULT_BUSY_RETRY_AFTER_MS) : MAX_BUSY_WHEN_STOPPING
      )
      return
    }
    const session = new ServedSession(stream, {
      store: this.#store,
      stats: this.stats,
      log: this.#log,
      peerId,
      localPeerId: this.#node.peerId,
      onDenied: (reason) => this.#metrics?.peerAccessDenied.inc({ reason }),
      helloTimeoutMs: this.#openTimeoutMs,
      live: (digest) => this.#liveBlob(digest, EXPECT_WAIT_MS),
      onInterest: (p, digest) => {
        for (const fn of this.#interest) fn(p, digest)
      },
      onUnknown: (p, digest) => this.#noteAsker(p, digest),
      swarmPeers: (digest, asker) => this.#swarmPeers(digest, asker),
      onServing: (digest) => this.#peersChanged(digest),
      upload: this.#init.upload,
      ...(this.#uploads && { uploads: this.#uploads }),
      onClosed: (s) => {
        this.#served.delete(s)
        if (this.#served.size === 0) for (const done of [...this.#idle]) done()
      },
      onServed: (n, partial) => {
        this.#metrics?.bytesServed.inc({ interface: 'peer' }, n)
        if (partial) this.#metrics?.partialPiecesServed.inc()
      }
    })
    this.#served.add(session)
  }

  /**
   * Peer exchange: the peers this node knows to be on `digest` (sessions either way, recent
   * askers), but `asker` and banned peers, with the addresses identify gave for them.
   */
  #swarmPeers(digest: string, asker: string): WirePeer[] {
    const ids = new Set<string>()
    for (const s of this.#outbound) if (s.digest === digest) ids.add(s.peerId)
    // Only sessions being served: one refused (a private blob, no proof) is no peer of the blob.
    for (const s of this.#served) if (s.digest === digest && s.serving) ids.add(s.peerId)
    for (const id of this.recentAskers(digest)) ids.add(id)
    ids.delete(asker)
    const peers: WirePeer[] = []
    for (const id of ids) {
      if (this.#bans?.isBanned(id)) continue
      // Without addresses yet (identify still running) the receiver dials by id: its peer store
      // or the DHT knows where.
      peers.push({ peerId: id, addresses: this.#listenAddresses.get(id) ?? [] })
      if (peers.length >= MAX_EXCHANGED_PEERS) break
    }
    return peers
  }

  /**
   * A peer joined a blob's swarm here: soon (once for a burst of joins), every client served that
   * blob hears of the peers it does not know yet.
   */
  #peersChanged(digest: string): void {
    if (this.#pexTimers.has(digest)) return
    const timer = setTimeout(() => {
      this.#pexTimers.delete(digest)
      for (const s of this.#served) if (s.digest === digest) s.sharePeers()
    }, PEX_DEBOUNCE_MS)
    timer.unref()
    this.#pexTimers.set(digest, timer)
  }

  /** Cuts every session with a banned peer, both directions. */
  #cut(peerId: string, reason: string): void {
    this.#log.warn({ peer: peerId, reason }, 'peer banned: cutting its sessions')
    this.#metrics?.peerBans.inc({ reason })
    const err = new UpstreamUnavailableError(`peer ${peerId} is banned: ${reason}`)
    for (const s of [...this.#served]) if (s.peerId === peerId) s.abort(err)
    for (const s of [...this.#outbound]) if (s.peerId === peerId) s.abort(err)
  }
}

/** Multiaddrs to dial a peer on, each ending in its `/p2p/<id>`; its bare id when none are known. */
function dialTargets(peer: SessionPeer): Multiaddr[] {
  const suffix = `/p2p/${peer.peerId}`
  if (peer.addresses.length === 0) return [multiaddr(suffix)]
  return peer.addresses.map((a) => multiaddr(a.includes('/p2p/') ? a : `${a}${suffix}`))
}
