/**
 * The piece protocol over libp2p streams (first version: complete blobs only). One stream is one
 * session about one blob: the client sends `hello {digest}`, the server answers with the blob's
 * `piece-list` and its have-`bitfield` (or `reject` / `busy` and closes), then the client sends
 * `request {index}` frames, as many in flight as it likes, and the server answers each with a
 * `piece {index, data}` in request order; `cancel` drops a request still queued.
 *
 * Streams follow shared/recipes/libp2p.md ("Streams in libp2p 3"): both sides read from
 * `message` events into a `FrameDecoder` (never `for await`), and the server waits for the
 * `drain` event (never `onDrain()`) whenever `send()` returns false. The client never pauses its
 * stream: it holds at most one partial frame (checked) and the bytes it asked for, so what it
 * buffers is bounded by the requests it keeps in flight.
 */
import '../polyfill.ts'
import type { Stream } from '@libp2p/interface'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'
import type { ShoalMetrics } from '../api/metrics.ts'
import { second } from '../constants.ts'
import { isDigest } from '../content/digest.ts'
import { decodePieceList, encodePieceList, type PieceList, verifyPiece } from '../content/piece-list.ts'
import { pieceRange } from '../content/pieces.ts'
import {
  AbortedError,
  BlobUnknownError,
  InvalidDigestError,
  ProtocolViolationError,
  RangeNotSatisfiableError,
  ShoalError,
  toShoalError,
  UpstreamTimeoutError,
  UpstreamUnavailableError
} from '../errors.ts'
import type { AbortOptions, Startable } from '../interface/common.ts'
import type { BlobInfo, BlobStore, Lease } from '../interface/store.ts'
import { Bitfield } from './bitfield.ts'
import type { SwarmNode } from './swarm-node.ts'
import { DEFAULT_PROTOCOL_PREFIX } from './swarm-node.ts'
import { encodeFrameParts, FrameDecoder, MAX_CONTROL_FRAME, type WireMessage } from './wire.ts'

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

// Requests a client may keep queued on one session; more is abuse (each costs a queue slot).
const MAX_QUEUED_REQUESTS = 4096
// How long a closing session waits for the remote to close its side before aborting.
const LINGER_MS = 5 * second
// Frame overhead beyond a piece's bytes (type byte, index varint, length prefix).
const FRAME_SLACK = 64

/** Collaborators of a `PieceExchange`. */
export interface PieceExchangeComponents {
  node: SwarmNode
  store: BlobStore
  logger: Logger
  /** Counts bytes served to and taken from peers (`shoal_served_bytes_total{interface="peer"}`). */
  metrics?: ShoalMetrics
}

/** Configuration of a `PieceExchange`. */
export interface PieceExchangeInit {
  /** Prefix of Shoal's protocols (the same as the swarm node's). Default `/shoal`. */
  protocolPrefix?: string
  /** Inbound sessions served at once; beyond that a session gets `busy` and is closed. Default 16. */
  uploadSlots?: number
  /** Default deadline of `openSession` (dial, hello, piece list, bitfield), in ms. Default 10 s. */
  openTimeoutMs?: number
  /** Default deadline of one `fetchPiece`, in ms. Default 30 s. */
  requestTimeoutMs?: number
  /** The wait a busy server asks clients for, in ms. Default 1 s. */
  busyRetryAfterMs?: number
}

/** Options of `openSession`. */
export interface OpenSessionOptions extends AbortOptions {
  /** The blob's size when known (from its descriptor): a piece list declaring another is refused. */
  size?: number
  /** Deadline for the whole opening, in ms (default: the exchange's `openTimeoutMs`). */
  timeoutMs?: number
}

/** Options of `fetchPiece`. */
export interface FetchPieceOptions extends AbortOptions {
  /** Deadline for the reply, in ms (default: the exchange's `requestTimeoutMs`). */
  timeoutMs?: number
}

/** Counters of a `PieceExchange` (for metrics and tests). */
export interface PieceExchangeStats {
  /** Inbound sessions that got a piece list. */
  sessionsServed: number
  piecesServed: number
  bytesServed: number
  /** Pieces received and verified. */
  piecesFetched: number
  bytesFetched: number
}

/** A peer to open a session with: its id and multiaddrs (with or without `/p2p/<id>`). */
export interface SessionPeer {
  peerId: string
  addresses: string[]
}

/** An open session with one peer about one blob. */
export interface PeerSession {
  readonly peerId: string
  /** The blob's piece list as the peer sent it (checked against the digest and size asked for). */
  readonly pieceList: PieceList
  /** What the peer holds. */
  readonly bitfield: Bitfield
  /** False once the session has closed or failed: further requests throw. */
  readonly open: boolean
  /**
   * Requests one piece; resolves with its bytes verified against the piece list. Several requests
   * may be in flight on one session. A piece that fails its hash (`DigestMismatchError`) or its
   * length (`SizeMismatchError`) rejects its request and closes the session; the other requests
   * then reject with `UpstreamUnavailableError`. No reply in time: `UpstreamTimeoutError` (the
   * request is cancelled, the session stays open). A `reject` from the peer maps its code to the
   * matching error (`BLOB_UNKNOWN` → `BlobUnknownError`). Aborted: `AbortedError`.
   */
  fetchPiece(index: number, options?: FetchPieceOptions): Promise<Uint8Array>
  /** Ends the session (pending requests reject with `AbortedError`). Idempotent. */
  close(): Promise<void>
}

/**
 * The peer answered `busy`: it serves as many sessions as it allows. Its code is
 * `UPSTREAM_UNAVAILABLE`; `retryAfterMs` is the wait it asked for.
 */
export class PeerBusyError extends UpstreamUnavailableError {
  readonly retryAfterMs: number

  constructor(message: string, retryAfterMs: number) {
    super(message)
    this.name = 'PeerBusyError'
    this.retryAfterMs = retryAfterMs
  }
}

/** Serves complete blobs from the store to peers, and opens sessions with peers to fetch pieces. */
export class PieceExchange implements Startable {
  /** Counters since construction. */
  readonly stats: PieceExchangeStats = {
    sessionsServed: 0,
    piecesServed: 0,
    bytesServed: 0,
    piecesFetched: 0,
    bytesFetched: 0
  }

  /** The full protocol id, e.g. `/shoal/pieces/1.0.0`. */
  readonly protocol: string
  readonly #node: SwarmNode
  readonly #store: BlobStore
  readonly #metrics: ShoalMetrics | undefined
  readonly #log: Logger
  readonly #uploadSlots: number
  readonly #openTimeoutMs: number
  readonly #requestTimeoutMs: number
  readonly #busyRetryAfterMs: number
  readonly #served = new Set<ServedSession>()
  readonly #outbound = new Set<ClientSession>()
  #started = false

  constructor(components: PieceExchangeComponents, init: PieceExchangeInit = {}) {
    this.#node = components.node
    this.#store = components.store
    this.#metrics = components.metrics
    this.#log = components.logger.child({ component: 'pieces' })
    this.protocol = `${init.protocolPrefix ?? DEFAULT_PROTOCOL_PREFIX}${PIECE_PROTOCOL_SUFFIX}`
    this.#uploadSlots = init.uploadSlots ?? DEFAULT_UPLOAD_SLOTS
    this.#openTimeoutMs = init.openTimeoutMs ?? DEFAULT_OPEN_TIMEOUT_MS
    this.#requestTimeoutMs = init.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS
    this.#busyRetryAfterMs = init.busyRetryAfterMs ?? DEFAULT_BUSY_RETRY_AFTER_MS
  }

  /** Inbound sessions being served now. */
  get activeUploads(): number {
    return this.#served.size
  }

  /** Outbound sessions open now. */
  get activeSessions(): number {
    return this.#outbound.size
  }

  /** Registers the protocol handler on the swarm node (which must be started). Idempotent. */
  async start(): Promise<void> {
    if (this.#started) return
    await this.#node.libp2p.handle(this.protocol, (stream) => this.#accept(stream), {
      // Room above the slots, so extra sessions hear `busy` instead of a stream reset.
      maxInboundStreams: Math.max(32, this.#uploadSlots * 2),
      maxOutboundStreams: 64
    })
    this.#started = true
  }

  /** Unregisters the handler and aborts every open session, both directions. Idempotent. */
  async stop(): Promise<void> {
    const wasStarted = this.#started
    this.#started = false
    const err = new AbortedError('piece exchange stopped')
    for (const s of [...this.#served]) s.abort(err)
    for (const s of [...this.#outbound]) s.abort(err)
    if (wasStarted && this.#node.started) await this.#node.libp2p.unhandle(this.protocol)
  }

  /**
   * Opens a session with `peer` about the blob `digest`: dials it, says hello and waits for its
   * piece list (checked against `digest` and `options.size`) and its bitfield. Throws
   * `BlobUnknownError` when the peer does not hold the complete blob, `PeerBusyError` (code
   * `UPSTREAM_UNAVAILABLE`) when it has no upload slot, `UpstreamUnavailableError` when it cannot
   * be reached, `UpstreamTimeoutError` past the deadline, `InvalidPieceListError` /
   * `ProtocolViolationError` for a bad answer, `AbortedError` when aborted.
   */
  async openSession(
    peer: SessionPeer,
    digest: string,
    options: OpenSessionOptions = {}
  ): Promise<PeerSession> {
    if (!isDigest(digest)) throw new InvalidDigestError(`"${digest}" is not a sha256 digest`)
    if (!this.#started) throw new AbortedError('piece exchange is not started')
    const timeoutMs = options.timeoutMs ?? this.#openTimeoutMs
    const deadline = new Deadline(timeoutMs, options.signal)
    const what = `session with ${peer.peerId} about ${digest}`
    const mapError = (err: unknown): ShoalError => {
      if (options.signal?.aborted) return new AbortedError(`${what} aborted`, { cause: err })
      if (deadline.expired) return new UpstreamTimeoutError(`${what}: no answer within ${timeoutMs} ms`)
      if (err instanceof ShoalError) return err
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
      const session = new ClientSession(stream, {
        peerId: peer.peerId,
        digest,
        size: options.size,
        requestTimeoutMs: this.#requestTimeoutMs,
        stats: this.stats,
        log: this.#log,
        onClosed: (s) => this.#outbound.delete(s)
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
      return session
    } finally {
      deadline.clear()
    }
  }

  #accept(stream: Stream): void {
    if (!this.#started || this.#served.size >= this.#uploadSlots) {
      this.#log.debug({ slots: this.#uploadSlots }, 'no upload slot: answering busy')
      refuseBusy(stream, this.#started ? this.#busyRetryAfterMs : MAX_BUSY_WHEN_STOPPING)
      return
    }
    const session = new ServedSession(stream, {
      store: this.#store,
      stats: this.stats,
      log: this.#log,
      helloTimeoutMs: this.#openTimeoutMs,
      onClosed: (s) => this.#served.delete(s),
      onServed: (n) => this.#metrics?.bytesServed.inc({ interface: 'peer' }, n)
    })
    this.#served.add(session)
  }
}

// A stopping exchange still answers a racing stream with `busy` (for longer).
const MAX_BUSY_WHEN_STOPPING = 10 * second

/** Sends `busy` and closes the stream, aborting it if the peer does not close within LINGER_MS. */
function refuseBusy(stream: Stream, retryAfterMs: number): void {
  try {
    sendFrame(stream, { type: 'busy', retryAfterMs })
  } catch (err) {
    stream.abort(toError(err))
    return
  }
  closeWithLinger(stream)
}

/** Closes our write side; aborts the stream when it has not fully closed after LINGER_MS. */
function closeWithLinger(stream: Stream): void {
  const timer = setTimeout(() => stream.abort(new AbortedError('peer did not close the stream')), LINGER_MS)
  timer.unref()
  stream.addEventListener('close', () => clearTimeout(timer), { once: true })
  stream.close().catch((err: unknown) => stream.abort(toError(err)))
}

// ---------------------------------------------------------------------------------------------
// Server side

interface ServedSessionInit {
  store: BlobStore
  stats: PieceExchangeStats
  log: Logger
  helloTimeoutMs: number
  onClosed: (s: ServedSession) => void
  onServed: (bytes: number) => void
}

/** One inbound stream being served: hello, then requests answered in order. */
class ServedSession {
  readonly #stream: Stream
  readonly #init: ServedSessionInit
  readonly #decoder = new FrameDecoder()
  readonly #abort = new AbortController()
  readonly #queue: number[] = []
  #state: 'hello' | 'preparing' | 'serving' | 'closing' | 'closed' = 'hello'
  #digest = ''
  #info: BlobInfo | undefined
  #lease: Lease | undefined
  #helloTimer: NodeJS.Timeout | undefined
  #pumping = false
  #remoteEnded = false
  readonly #log: Logger

  constructor(stream: Stream, init: ServedSessionInit) {
    this.#stream = stream
    this.#init = init
    this.#log = init.log
    this.#helloTimer = setTimeout(
      () => this.abort(new ProtocolViolationError(`no hello within ${init.helloTimeoutMs} ms`)),
      init.helloTimeoutMs
    )
    stream.addEventListener('message', (evt) => this.#onData(evt.data))
    stream.addEventListener('end', () => this.#onEnd())
    stream.addEventListener('close', () => this.#cleanup(), { once: true })
  }

  /** Tears the session down at once (stop(), protocol violations). */
  abort(err: Error): void {
    if (this.#state === 'closed') return
    this.#log.debug({ err, digest: this.#digest }, 'aborting served session')
    this.#stream.abort(err)
    this.#cleanup()
  }

  #onData(data: Uint8Array | Iterable<Uint8Array>): void {
    if (this.#state === 'closed') return
    try {
      this.#decoder.push(data)
      for (const msg of this.#decoder.frames()) this.#handle(msg)
      // Clients send only control frames: never hold more than one of them.
      if (this.#decoder.buffered > MAX_CONTROL_FRAME) {
        throw new ProtocolViolationError(`client sent a frame over ${MAX_CONTROL_FRAME} bytes`)
      }
    } catch (err) {
      this.abort(toError(err))
    }
  }

  #onEnd(): void {
    if (this.#state === 'closed') return
    // `end` also fires just before the `close` of an abort or reset (the recipe).
    if (this.#stream.status === 'aborted' || this.#stream.status === 'reset') {
      this.#cleanup()
      return
    }
    this.#remoteEnded = true
    try {
      this.#decoder.end()
    } catch (err) {
      this.abort(toError(err))
      return
    }
    // Serve what is queued, then close; before hello there is nothing to serve.
    if (this.#state === 'hello') this.#close()
    else if (this.#state === 'serving' && !this.#pumping) void this.#pump()
  }

  #handle(msg: WireMessage): void {
    if (this.#state === 'closing') return
    if (this.#state === 'hello') {
      if (msg.type !== 'hello') throw new ProtocolViolationError(`expected hello, got ${msg.type}`)
      clearTimeout(this.#helloTimer)
      this.#state = 'preparing'
      this.#digest = msg.digest
      void this.#hello(msg.digest)
      return
    }
    switch (msg.type) {
      case 'request':
        if (this.#queue.length >= MAX_QUEUED_REQUESTS) {
          throw new ProtocolViolationError(`more than ${MAX_QUEUED_REQUESTS} requests queued`)
        }
        this.#queue.push(msg.index)
        if (this.#state === 'serving') void this.#pump()
        return
      case 'cancel': {
        const at = this.#queue.indexOf(msg.index)
        if (at >= 0) this.#queue.splice(at, 1)
        return
      }
      case 'have':
      case 'fetching':
      case 'choke':
      case 'unchoke':
        // Meaningful once sessions are symmetric (partial blobs); a client may send them already.
        return
      default:
        throw new ProtocolViolationError(`unexpected ${msg.type} from a client`)
    }
  }

  async #hello(digest: string): Promise<void> {
    const { store } = this.#init
    const signal = this.#abort.signal
    try {
      // Leased first, so the blob cannot be evicted between the checks and the reads.
      this.#lease = store.acquire(digest)
      const info = await store.stat(digest, { signal })
      const pieces = info?.complete ? await store.pieces(digest, { signal }) : []
      if (this.#state !== 'preparing') return
      if (info === undefined || !info.complete) {
        this.#reject(0, 'BLOB_UNKNOWN')
        return
      }
      if (pieces.length !== info.pieceCount || pieces.some((p, i) => p.index !== i)) {
        this.#log.warn(
          { digest, held: pieces.length, count: info.pieceCount },
          'complete blob without all its pieces'
        )
        this.#reject(0, 'BLOB_UNKNOWN')
        return
      }
      const bytes = encodePieceList({
        digest,
        size: info.size,
        pieceSize: info.pieceSize,
        hashes: pieces.map((p) => p.sha256)
      })
      this.#info = info
      sendFrame(this.#stream, { type: 'piece-list', bytes })
      sendFrame(this.#stream, { type: 'bitfield', bits: Bitfield.all(info.pieceCount).toBytes() })
      this.#init.stats.sessionsServed++
      this.#state = 'serving'
      this.#log.debug({ digest, pieces: info.pieceCount }, 'serving blob')
      void this.#pump()
    } catch (err) {
      this.abort(toError(err))
    }
  }

  /** Sends `reject` and closes: the session is over. */
  #reject(index: number, code: string): void {
    this.#queue.length = 0
    sendFrame(this.#stream, { type: 'reject', index, code })
    this.#close()
  }

  #close(): void {
    if (this.#state === 'closed' || this.#state === 'closing') return
    this.#state = 'closing'
    this.#releaseLease()
    closeWithLinger(this.#stream)
  }

  /** Answers queued requests in order, one piece at a time, honouring the stream's backpressure. */
  async #pump(): Promise<void> {
    if (this.#pumping) return
    this.#pumping = true
    try {
      while (this.#state === 'serving') {
        const index = this.#queue.shift()
        if (index === undefined) break
        await this.#servePiece(index)
      }
      if (this.#state === 'serving' && this.#remoteEnded && this.#queue.length === 0) this.#close()
    } catch (err) {
      this.abort(toError(err))
    } finally {
      this.#pumping = false
    }
  }

  async #servePiece(index: number): Promise<void> {
    const info = this.#info as BlobInfo
    if (index >= info.pieceCount) {
      sendFrame(this.#stream, { type: 'reject', index, code: RangeNotSatisfiableError.code })
      return
    }
    const range = pieceRange(index, info.size, info.pieceSize)
    let data: Uint8Array
    try {
      data = await this.#init.store.read(this.#digest, range, { signal: this.#abort.signal })
    } catch (err) {
      if (this.#state !== 'serving') return
      const e = toShoalError(err)
      this.#log.warn({ err: e, digest: this.#digest, index }, 'cannot read a piece to serve')
      sendFrame(this.#stream, { type: 'reject', index, code: e.code })
      return
    }
    if (this.#state !== 'serving') return
    const more = sendFrame(this.#stream, { type: 'piece', index, data })
    this.#init.stats.piecesServed++
    this.#init.stats.bytesServed += data.length
    this.#init.onServed(data.length)
    if (!more) await waitForDrain(this.#stream, this.#abort.signal)
  }

  #releaseLease(): void {
    this.#lease?.release()
    this.#lease = undefined
  }

  #cleanup(): void {
    if (this.#state === 'closed') return
    this.#state = 'closed'
    clearTimeout(this.#helloTimer)
    this.#queue.length = 0
    this.#abort.abort()
    this.#releaseLease()
    this.#init.onClosed(this)
  }
}

// ---------------------------------------------------------------------------------------------
// Client side

interface ClientSessionInit {
  peerId: string
  digest: string
  size: number | undefined
  requestTimeoutMs: number
  stats: PieceExchangeStats
  log: Logger
  onClosed: (s: ClientSession) => void
}

interface PendingRequest {
  resolve: (data: Uint8Array) => void
  reject: (err: Error) => void
  /** Clears the timer and the abort listener. */
  settle: () => void
}

/** The client end of a session. */
class ClientSession implements PeerSession {
  readonly peerId: string
  readonly #stream: Stream
  readonly #init: ClientSessionInit
  readonly #decoder = new FrameDecoder()
  readonly #pending = new Map<number, PendingRequest[]>()
  /** Requests cancelled (by timeout or abort) whose piece may still arrive, per index. */
  readonly #cancelled = new Map<number, number>()
  #state: 'opening' | 'open' | 'closed' = 'opening'
  #pieceList: PieceList | undefined
  #bitfield: Bitfield | undefined
  #maxBuffered = Number.POSITIVE_INFINITY
  #closedBy: Error | undefined
  #opened: { resolve: () => void; reject: (err: Error) => void } | undefined
  #streamClosed = false

  constructor(stream: Stream, init: ClientSessionInit) {
    this.peerId = init.peerId
    this.#stream = stream
    this.#init = init
    stream.addEventListener('message', (evt) => this.#onData(evt.data))
    stream.addEventListener('end', () => this.#onEnd())
    stream.addEventListener(
      'close',
      (evt) => {
        this.#streamClosed = true
        this.#fail(
          new UpstreamUnavailableError(`peer ${this.peerId} closed the session`, { cause: evt.error }),
          false
        )
        init.onClosed(this)
      },
      { once: true }
    )
  }

  get pieceList(): PieceList {
    return this.#pieceList as PieceList
  }

  get bitfield(): Bitfield {
    return this.#bitfield as Bitfield
  }

  get open(): boolean {
    return this.#state === 'open'
  }

  /** Says hello and waits for the piece list and bitfield (or the reason there are none). */
  async handshake(signal: AbortSignal): Promise<void> {
    const done = new Promise<void>((resolve, reject) => {
      this.#opened = { resolve, reject }
    })
    const onAbort = () => this.#opened?.reject(new AbortedError('session opening aborted'))
    signal.addEventListener('abort', onAbort, { once: true })
    try {
      if (signal.aborted) onAbort()
      if (this.#stream.status !== 'open') {
        this.#fail(new UpstreamUnavailableError(`stream to ${this.peerId} closed at once`), false)
      } else {
        sendFrame(this.#stream, { type: 'hello', digest: this.#init.digest })
      }
      await done
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
  }

  fetchPiece(index: number, options: FetchPieceOptions = {}): Promise<Uint8Array> {
    if (this.#state !== 'open') {
      return Promise.reject(
        new UpstreamUnavailableError(`session with ${this.peerId} is closed`, { cause: this.#closedBy })
      )
    }
    const pl = this.pieceList
    if (!Number.isSafeInteger(index) || index < 0 || index >= pl.hashes.length) {
      return Promise.reject(
        new RangeNotSatisfiableError(`piece ${index} is outside ${pl.digest} (${pl.hashes.length} pieces)`)
      )
    }
    if (!this.bitfield.has(index)) {
      return Promise.reject(
        new BlobUnknownError(`peer ${this.peerId} does not hold piece ${index} of ${pl.digest}`)
      )
    }
    const { signal } = options
    if (signal?.aborted) return Promise.reject(new AbortedError(`request for piece ${index} aborted`))
    const timeoutMs = options.timeoutMs ?? this.#init.requestTimeoutMs
    return new Promise<Uint8Array>((resolve, reject) => {
      const giveUp = (err: Error) => {
        if (!this.#unqueue(index, entry)) return
        entry.settle()
        this.#cancelled.set(index, (this.#cancelled.get(index) ?? 0) + 1)
        if (this.#state === 'open') {
          try {
            sendFrame(this.#stream, { type: 'cancel', index })
          } catch {
            // The stream is going away; its close event fails the session.
          }
        }
        reject(err)
      }
      const timer = setTimeout(
        () =>
          giveUp(
            new UpstreamTimeoutError(
              `peer ${this.peerId} sent no piece ${index} of ${pl.digest} in ${timeoutMs} ms`
            )
          ),
        timeoutMs
      )
      const onAbort = () => giveUp(new AbortedError(`request for piece ${index} aborted`))
      signal?.addEventListener('abort', onAbort, { once: true })
      const entry: PendingRequest = {
        resolve,
        reject,
        settle: () => {
          clearTimeout(timer)
          signal?.removeEventListener('abort', onAbort)
        }
      }
      const queue = this.#pending.get(index)
      if (queue === undefined) this.#pending.set(index, [entry])
      else queue.push(entry)
      try {
        sendFrame(this.#stream, { type: 'request', index })
      } catch (err) {
        this.#unqueue(index, entry)
        entry.settle()
        reject(new UpstreamUnavailableError(`cannot send a request to ${this.peerId}`, { cause: err }))
      }
    })
  }

  async close(): Promise<void> {
    if (this.#state === 'closed') return
    // With requests outstanding the peer would send pieces nobody wants: reset instead.
    const graceful = this.#pending.size === 0
    this.#fail(new AbortedError(`session with ${this.peerId} closed`), !graceful)
    if (graceful && !this.#streamClosed) closeWithLinger(this.#stream)
  }

  /** Fails the session and resets the stream. */
  abort(err: Error): void {
    this.#fail(err, true)
  }

  #onData(data: Uint8Array | Iterable<Uint8Array>): void {
    if (this.#state === 'closed') return
    try {
      this.#decoder.push(data)
      for (const msg of this.#decoder.frames()) {
        this.#handle(msg)
        // #handle may have failed the session (a bad piece).
        if (this.#isClosed()) return
      }
      // At most one partial frame may be buffered, no longer than the largest legitimate one.
      if (this.#decoder.buffered > this.#maxBuffered) {
        throw new ProtocolViolationError(
          `peer ${this.peerId} sent a frame over ${this.#maxBuffered} bytes for pieces of ${this.pieceList.pieceSize}`
        )
      }
    } catch (err) {
      this.#fail(toError(err), true)
    }
  }

  #isClosed(): boolean {
    return this.#state === 'closed'
  }

  #onEnd(): void {
    if (this.#state === 'closed') return
    try {
      this.#decoder.end()
    } catch (err) {
      this.#fail(toError(err), true)
      return
    }
    this.#fail(new UpstreamUnavailableError(`peer ${this.peerId} ended the session`), false)
  }

  #handle(msg: WireMessage): void {
    const digest = this.#init.digest
    if (msg.type === 'busy') {
      throw new PeerBusyError(
        `peer ${this.peerId} is busy (retry after ${msg.retryAfterMs} ms)`,
        msg.retryAfterMs
      )
    }
    if (this.#state === 'opening') {
      if (msg.type === 'reject') throw rejectError(msg.code, `peer ${this.peerId} rejected ${digest}`)
      if (this.#pieceList === undefined) {
        if (msg.type !== 'piece-list')
          throw new ProtocolViolationError(`expected a piece list, got ${msg.type}`)
        const size = this.#init.size
        this.#pieceList = decodePieceList(msg.bytes, size === undefined ? { digest } : { digest, size })
        return
      }
      if (msg.type !== 'bitfield') throw new ProtocolViolationError(`expected a bitfield, got ${msg.type}`)
      this.#bitfield = Bitfield.fromBytes(msg.bits, this.#pieceList.hashes.length)
      this.#maxBuffered = Math.max(this.#pieceList.pieceSize, MAX_CONTROL_FRAME) + FRAME_SLACK
      this.#state = 'open'
      this.#opened?.resolve()
      return
    }
    switch (msg.type) {
      case 'piece':
        this.#onPiece(msg.index, msg.data)
        return
      case 'reject': {
        const entry = this.#take(msg.index)
        const err = rejectError(msg.code, `peer ${this.peerId} rejected piece ${msg.index} of ${digest}`)
        if (entry !== undefined) entry.reject(err)
        else if (!this.#takeCancelled(msg.index)) throw err
        return
      }
      case 'have':
        if (msg.index < this.bitfield.size) this.bitfield.set(msg.index)
        return
      case 'fetching':
      case 'choke':
      case 'unchoke':
        return
      default:
        throw new ProtocolViolationError(`unexpected ${msg.type} from a server`)
    }
  }

  #onPiece(index: number, data: Uint8Array): void {
    const entry = this.#take(index)
    if (entry === undefined) {
      if (this.#takeCancelled(index)) return
      throw new ProtocolViolationError(`peer ${this.peerId} sent piece ${index}, which was not requested`)
    }
    try {
      verifyPiece(this.pieceList, index, data)
    } catch (err) {
      const e = toError(err)
      entry.reject(e)
      this.#init.log.warn(
        { peer: this.peerId, digest: this.#init.digest, index, err: e },
        'peer sent a bad piece'
      )
      this.#fail(e, true)
      return
    }
    this.#init.stats.piecesFetched++
    this.#init.stats.bytesFetched += data.length
    entry.resolve(data)
  }

  /** Removes and settles the oldest pending request for `index`. */
  #take(index: number): PendingRequest | undefined {
    const queue = this.#pending.get(index)
    const entry = queue?.shift()
    if (queue !== undefined && queue.length === 0) this.#pending.delete(index)
    entry?.settle()
    return entry
  }

  #unqueue(index: number, entry: PendingRequest): boolean {
    const queue = this.#pending.get(index)
    const at = queue?.indexOf(entry) ?? -1
    if (queue === undefined || at < 0) return false
    queue.splice(at, 1)
    if (queue.length === 0) this.#pending.delete(index)
    return true
  }

  #takeCancelled(index: number): boolean {
    const n = this.#cancelled.get(index) ?? 0
    if (n === 0) return false
    if (n === 1) this.#cancelled.delete(index)
    else this.#cancelled.set(index, n - 1)
    return true
  }

  /**
   * Closes the session for good: the opening (if any) rejects with `err` itself, pending
   * requests with `AbortedError` when we closed it, else `UpstreamUnavailableError` citing it.
   */
  #fail(err: Error, reset: boolean): void {
    if (this.#state === 'closed') return
    this.#state = 'closed'
    this.#closedBy = err
    this.#opened?.reject(err)
    const forRequests =
      err instanceof AbortedError
        ? err
        : new UpstreamUnavailableError(`session with ${this.peerId} failed: ${err.message}`, { cause: err })
    for (const queue of this.#pending.values()) {
      for (const entry of queue) {
        entry.settle()
        entry.reject(forRequests)
      }
    }
    this.#pending.clear()
    this.#cancelled.clear()
    if (reset && !this.#streamClosed) this.#stream.abort(err)
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** Sends every part of a frame; returns false when the caller must wait for `drain`. */
function sendFrame(stream: Stream, msg: WireMessage): boolean {
  let more = true
  for (const part of encodeFrameParts(msg)) {
    if (part.length > 0) more = stream.send(part)
  }
  return more
}

/**
 * Waits for the stream's `drain` event (the recipe: `onDrain()` resolves at once after its first
 * use). Rejects when the stream closes or `signal` aborts.
 */
function waitForDrain(stream: Stream, signal: AbortSignal): Promise<void> {
  if (!stream.writableNeedsDrain) return Promise.resolve()
  return new Promise<void>((resolve, reject) => {
    const done = (err?: Error) => {
      stream.removeEventListener('drain', onDrain)
      stream.removeEventListener('close', onClose)
      signal.removeEventListener('abort', onAbort)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onDrain = () => done()
    const onClose = () => done(new AbortedError('stream closed while waiting to send'))
    const onAbort = () => done(new AbortedError('session aborted while waiting to send'))
    stream.addEventListener('drain', onDrain)
    stream.addEventListener('close', onClose)
    signal.addEventListener('abort', onAbort)
    if (signal.aborted) onAbort()
  })
}

/** The error a `reject {code}` stands for. */
function rejectError(code: string, message: string): ShoalError {
  switch (code) {
    case BlobUnknownError.code:
      return new BlobUnknownError(message)
    case RangeNotSatisfiableError.code:
      return new RangeNotSatisfiableError(message)
    default:
      return new UpstreamUnavailableError(`${message} (${code})`)
  }
}

/** Multiaddrs to dial a peer on, each ending in its `/p2p/<id>`; its bare id when none are known. */
function dialTargets(peer: SessionPeer): Multiaddr[] {
  const suffix = `/p2p/${peer.peerId}`
  if (peer.addresses.length === 0) return [multiaddr(suffix)]
  return peer.addresses.map((a) => multiaddr(a.includes('/p2p/') ? a : `${a}${suffix}`))
}

/** A timer combined with an optional caller's signal; `expired` tells which one fired. */
class Deadline {
  readonly signal: AbortSignal
  readonly #controller = new AbortController()
  readonly #timer: NodeJS.Timeout
  expired = false

  constructor(ms: number, parent?: AbortSignal) {
    this.#timer = setTimeout(() => {
      this.expired = true
      this.#controller.abort(new UpstreamTimeoutError(`deadline of ${ms} ms passed`))
    }, ms)
    this.signal =
      parent === undefined ? this.#controller.signal : AbortSignal.any([parent, this.#controller.signal])
  }

  clear(): void {
    clearTimeout(this.#timer)
  }
}

function toError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err))
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
