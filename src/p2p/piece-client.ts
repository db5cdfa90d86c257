/**
 * The client end of a piece-protocol session: one stream about one blob. It says `hello`, learns
 * what the peer holds (a complete blob's piece list and bitfield, or a partial blob's geometry
 * followed by a `have` per piece with its hash), keeps learning (`have`, `fetching`) while the
 * peer's own transfer runs, and requests pieces, as many in flight as the caller likes. Every
 * piece is checked against the hash the peer vouched for before it is handed on.
 *
 * The client never pauses its stream: it holds at most one partial frame (checked) and the
 * pieces it asked for, so what it buffers is bounded by the requests it keeps in flight.
 */
import type { Stream } from '@libp2p/interface'
import type { Logger } from 'pino'
import { steadyNow } from '../clock.ts'
import { sha256Hex } from '../content/digest.ts'
import { decodePieceList } from '../content/piece-list.ts'
import { checkGeometry, pieceCount, pieceRange } from '../content/pieces.ts'
import {
  AbortedError,
  BlobUnknownError,
  DigestMismatchError,
  ProtocolViolationError,
  RangeNotSatisfiableError,
  SizeMismatchError,
  UpstreamTimeoutError,
  UpstreamUnavailableError
} from '../errors.ts'
import type { PeerBlobSession, PeerEvent } from '../interface/peers.ts'
import { Bitfield } from './bitfield.ts'
import { closeWithLinger, rejectError, sendFrame, toError } from './stream-frames.ts'
import { FrameDecoder, MAX_CONTROL_FRAME, type WireMessage } from './wire.ts'

// Frame overhead beyond a piece's bytes (type byte, index varint, length prefix).
const FRAME_SLACK = 64

/** Counters a client session adds to. */
export interface ClientStats {
  piecesFetched: number
  bytesFetched: number
}

export interface ClientSessionInit {
  peerId: string
  digest: string
  /** The blob's size when the caller knows it: a peer declaring another is refused. */
  size: number | undefined
  /** A proof of access to the blob (content/access.ts), sent with the hello. */
  proof?: Uint8Array
  requestTimeoutMs: number
  stats: ClientStats
  log: Logger
  onClosed: (s: ClientSession) => void
  /** A piece failed its hash (for metrics); the session closes. */
  onBadPiece?: (peerId: string, index: number) => void
}

/** Options of `fetchPiece`. */
export interface FetchPieceOptions {
  signal?: AbortSignal
  /** Deadline for the reply, in ms (default: the exchange's request timeout). */
  timeoutMs?: number
}

interface PendingRequest {
  resolve: (data: Uint8Array) => void
  reject: (err: Error) => void
  /** Clears the timer and the abort listener. */
  settle: () => void
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

/** One outbound session. See the module comment. */
export class ClientSession implements PeerBlobSession {
  readonly peerId: string
  readonly #stream: Stream
  readonly #init: ClientSessionInit
  readonly #decoder = new FrameDecoder()
  readonly #pending = new Map<number, PendingRequest[]>()
  /** Requests cancelled (by timeout or abort) whose piece may still arrive, per index. */
  readonly #cancelled = new Map<number, number>()
  readonly #listeners = new Set<(e: PeerEvent) => void>()
  #state: 'opening' | 'open' | 'closed' = 'opening'
  /** Every piece's hash, when the peer sent a piece list (a complete blob). */
  #pieceHashes: string[] | undefined
  /** Hashes learned one HAVE at a time (a partial blob). */
  readonly #haveHashes = new Map<number, string>()
  readonly #fetching = new Map<number, number>()
  /** Peers on this blob the server told us of (peer exchange), by id. */
  readonly #peersHeard = new Map<string, { peerId: string; addresses: string[] }>()
  #size = 0
  #pieceSize = 0
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

  /** Peers on this blob the server has told us of so far (peer exchange). */
  peersHeard(): { peerId: string; addresses: string[] }[] {
    return [...this.#peersHeard.values()]
  }

  /** The blob this session is about. */
  get digest(): string {
    return this.#init.digest
  }

  get size(): number {
    return this.#size
  }

  get pieceSize(): number {
    return this.#pieceSize
  }

  get open(): boolean {
    return this.#state === 'open'
  }

  /** Why the session closed, once it has. */
  get closedBy(): Error | undefined {
    return this.#closedBy
  }

  /** True when the peer sent a piece list: it holds the whole blob. */
  get complete(): boolean {
    return this.#pieceHashes !== undefined
  }

  get held(): number {
    return this.#bitfield?.count() ?? 0
  }

  has(index: number): boolean {
    return this.#bitfield?.has(index) ?? false
  }

  hashOf(index: number): string | undefined {
    if (!this.has(index)) return undefined
    return this.#pieceHashes?.[index] ?? this.#haveHashes.get(index)
  }

  fetchingSince(index: number): number | undefined {
    return this.#fetching.get(index)
  }

  onEvent(fn: (event: PeerEvent) => void): () => void {
    this.#listeners.add(fn)
    return () => this.#listeners.delete(fn)
  }

  /** Says hello and waits for what the peer holds (or the reason it holds nothing). */
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
        const proof = this.#init.proof
        sendFrame(this.#stream, { type: 'hello', digest: this.#init.digest, ...(proof && { proof }) })
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
    const digest = this.#init.digest
    if (!Number.isSafeInteger(index) || index < 0 || index >= (this.#bitfield?.size ?? 0)) {
      return Promise.reject(new RangeNotSatisfiableError(`piece ${index} is outside ${digest}`))
    }
    if (!this.has(index)) {
      return Promise.reject(
        new BlobUnknownError(`peer ${this.peerId} does not hold piece ${index} of ${digest}`)
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
              `peer ${this.peerId} sent no piece ${index} of ${digest} in ${timeoutMs} ms`
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
          `peer ${this.peerId} sent a frame over ${this.#maxBuffered} bytes for pieces of ${this.#pieceSize}`
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
      this.#handleOpening(msg)
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
        this.#onHave(msg.index, msg.sha256)
        return
      case 'fetching':
        this.#checkIndex(msg.index, 'fetching')
        if (this.has(msg.index)) return
        this.#fetching.set(msg.index, steadyNow())
        this.#emit({ type: 'fetching', index: msg.index })
        return
      case 'peers': {
        const peers = msg.peers.filter((p) => p.peerId !== this.peerId)
        for (const p of peers) this.#peersHeard.set(p.peerId, p)
        this.#emit({ type: 'peers', peers })
        return
      }
      case 'choke':
      case 'unchoke':
        return
      default:
        throw new ProtocolViolationError(`unexpected ${msg.type} from a server`)
    }
  }

  #handleOpening(msg: WireMessage): void {
    const digest = this.#init.digest
    const size = this.#init.size
    if (msg.type === 'reject') throw rejectError(msg.code, `peer ${this.peerId} rejected ${digest}`)
    if (msg.type === 'partial') {
      checkGeometry(msg.size, msg.pieceSize)
      if (size !== undefined && msg.size !== size) {
        throw new SizeMismatchError(`peer ${this.peerId} says ${digest} has ${msg.size} bytes, not ${size}`)
      }
      this.#openWith(msg.size, msg.pieceSize)
      return
    }
    if (this.#pieceHashes === undefined) {
      if (msg.type !== 'piece-list')
        throw new ProtocolViolationError(`expected a piece list, got ${msg.type}`)
      const pl = decodePieceList(msg.bytes, size === undefined ? { digest } : { digest, size })
      this.#pieceHashes = pl.hashes
      this.#size = pl.size
      this.#pieceSize = pl.pieceSize
      return
    }
    if (msg.type !== 'bitfield') throw new ProtocolViolationError(`expected a bitfield, got ${msg.type}`)
    const bits = Bitfield.fromBytes(msg.bits, this.#pieceHashes.length)
    this.#openWith(this.#size, this.#pieceSize, bits)
  }

  #openWith(size: number, pieceSize: number, bits?: Bitfield): void {
    this.#size = size
    this.#pieceSize = pieceSize
    this.#bitfield = bits ?? new Bitfield(pieceCount(size, pieceSize))
    this.#maxBuffered = Math.max(pieceSize, MAX_CONTROL_FRAME) + FRAME_SLACK
    this.#state = 'open'
    this.#opened?.resolve()
  }

  #checkIndex(index: number, what: string): void {
    const count = this.#bitfield?.size ?? 0
    if (index >= count) {
      throw new ProtocolViolationError(
        `peer ${this.peerId} sent ${what} ${index} of a blob of ${count} pieces`
      )
    }
  }

  #onHave(index: number, sha256: string): void {
    this.#checkIndex(index, 'have')
    const known = this.hashOf(index)
    if (known !== undefined) {
      // A complete blob's piece list already says it all; a partial peer may not change its story.
      if (known !== sha256) {
        throw new ProtocolViolationError(`peer ${this.peerId} sent two hashes for piece ${index}`)
      }
      return
    }
    this.#haveHashes.set(index, sha256)
    this.#bitfield?.set(index)
    this.#fetching.delete(index)
    this.#emit({ type: 'have', index })
  }

  #emit(event: PeerEvent): void {
    for (const fn of this.#listeners) fn(event)
  }

  #onPiece(index: number, data: Uint8Array): void {
    const entry = this.#take(index)
    if (entry === undefined) {
      if (this.#takeCancelled(index)) return
      throw new ProtocolViolationError(`peer ${this.peerId} sent piece ${index}, which was not requested`)
    }
    const digest = this.#init.digest
    const range = pieceRange(index, this.#size, this.#pieceSize)
    let err: Error | undefined
    if (data.length !== range.end - range.start) {
      err = new SizeMismatchError(
        `peer ${this.peerId} sent piece ${index} of ${digest} with ${data.length} bytes, not ${range.end - range.start}`
      )
    } else if (sha256Hex(data) !== this.hashOf(index)) {
      err = new DigestMismatchError(
        `peer ${this.peerId} sent piece ${index} of ${digest} that fails its hash`
      )
    }
    if (err !== undefined) {
      entry.reject(err)
      this.#init.log.warn({ peer: this.peerId, digest, index, err }, 'peer sent a bad piece')
      this.#init.onBadPiece?.(this.peerId, index)
      this.#fail(err, true)
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
    this.#emit({ type: 'closed' })
  }
}
