/**
 * The server end of a piece-protocol session: one inbound stream about one blob. After the
 * client's `hello` it describes what this node holds: a complete blob as its piece list and a
 * full bitfield; a blob this node is still fetching (a `LiveBlob`) as `partial` (its geometry),
 * one `have` per held piece with its hash, one `fetching` per piece on its way from the registry,
 * and then the same news as the transfer makes it. Requests are answered in order, one piece at
 * a time, honouring the stream's backpressure and the node's upload rate.
 *
 * A private blob (docs/decisions/0011-private-blobs.md) is described only to a client whose hello
 * carries a proof made with one of the access keys the store recorded for it; any other client
 * hears `BLOB_UNKNOWN`, as if this node did not hold it, and so learns nothing of the blob: not
 * its piece hashes, not what is being fetched, not who else is on it.
 */
import type { Stream } from '@libp2p/interface'
import type { Logger } from 'pino'
import { verifyAccessProof } from '../content/access.ts'
import { encodePieceList } from '../content/piece-list.ts'
import { pieceCount, pieceRange } from '../content/pieces.ts'
import {
  AccessDeniedError,
  BlobUnknownError,
  PieceBusyError,
  ProtocolViolationError,
  RangeNotSatisfiableError,
  toShoalError
} from '../errors.ts'
import type { TokenBucket } from '../fetch/token-bucket.ts'
import type { LiveBlob, LiveBlobEvent } from '../interface/peers.ts'
import type { BlobInfo, BlobStore, Lease } from '../interface/store.ts'
import { Bitfield } from './bitfield.ts'
import { closeWithLinger, sendFrame, toError, waitForDrain } from './stream-frames.ts'
import { FrameDecoder, MAX_CONTROL_FRAME, type WireMessage, type WirePeer } from './wire.ts'

// Requests a client may keep queued on one session; more is abuse (each costs a queue slot).
const MAX_QUEUED_REQUESTS = 4096

/** Counters a served session adds to. */
export interface ServerStats {
  sessionsServed: number
  piecesServed: number
  bytesServed: number
  /** Pieces served from a blob this node had not finished. */
  partialPiecesServed: number
}

export interface ServedSessionInit {
  store: BlobStore
  stats: ServerStats
  log: Logger
  helloTimeoutMs: number
  /** The peer on the other end. */
  peerId: string
  /** This node's peer id: a proof of access is bound to it. */
  localPeerId: string
  /** Told when a client is refused a private blob (`no-proof` or `bad-proof`). */
  onDenied?: (reason: 'no-proof' | 'bad-proof') => void
  /** This node's transfer of a blob, when one is running. */
  live: (digest: string) => Promise<LiveBlob | undefined> | LiveBlob | undefined
  /** Told when a peer asks for a blob this node is fetching too (it may serve us as well). */
  onInterest: (peerId: string, digest: string) => void
  /** Told when a peer asks for a blob this node neither holds nor fetches. */
  onUnknown?: (peerId: string, digest: string) => void
  /** Paces what this node uploads; absent, uploads are not capped. */
  upload?: TokenBucket | undefined
  /**
   * Pieces this node is uploading now across all sessions, and how many it allows; beyond
   * that a request is answered `PIECE_BUSY` so the asker turns to another holder. Absent: no limit.
   */
  uploads?: { active: number; readonly limit: number }
  /** Other peers known to be on a blob, for peer exchange (the asker is left out). */
  swarmPeers?: (digest: string, asker: string) => WirePeer[]
  /** Told when the session starts serving `digest`: one more peer on that blob. */
  onServing?: (digest: string) => void
  onClosed: (s: ServedSession) => void
  onServed: (bytes: number, partial: boolean) => void
}

/** One inbound stream being served. See the module comment. */
export class ServedSession {
  readonly peerId: string
  /** Pieces and bytes sent on this session. */
  piecesServed = 0
  bytesServed = 0
  readonly #stream: Stream
  readonly #init: ServedSessionInit
  readonly #decoder = new FrameDecoder()
  readonly #abort = new AbortController()
  readonly #queue: number[] = []
  #state: 'hello' | 'preparing' | 'serving' | 'closing' | 'closed' = 'hello'
  #digest = ''
  /** Peers this client has been told of (peer exchange). */
  readonly #told = new Set<string>()
  #size = 0
  #pieceSize = 0
  #count = 0
  /** This node's transfer while the blob is partial; undefined once it is complete. */
  #live: LiveBlob | undefined
  #unsubscribe: (() => void) | undefined
  #lease: Lease | undefined
  #helloTimer: NodeJS.Timeout | undefined
  #pumping = false
  #remoteEnded = false
  readonly #log: Logger

  /** The blob asked for ('' until the hello). */
  get digest(): string {
    return this.#digest
  }

  /** True while the blob is being described or served to the client (not refused, not closed). */
  get serving(): boolean {
    return this.#state === 'serving'
  }

  constructor(stream: Stream, init: ServedSessionInit) {
    this.peerId = init.peerId
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

  /** Tears the session down at once (stop(), bans, protocol violations). */
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
      void this.#hello(msg.digest, msg.proof)
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
        // Sessions are one-way: what a client holds reaches us on our own session to it.
        return
      default:
        throw new ProtocolViolationError(`unexpected ${msg.type} from a client`)
    }
  }

  async #hello(digest: string, proof: Uint8Array | undefined): Promise<void> {
    const { store } = this.#init
    const signal = this.#abort.signal
    try {
      // Leased first, so the blob cannot be evicted between the checks and the reads.
      this.#lease = store.acquire(digest)
      const info = await store.stat(digest, { signal })
      if (this.#state !== 'preparing') return
      if (info?.complete) {
        if (!(await this.#mayServe(digest, proof, signal))) return
        await this.#describeComplete(info, signal)
        return
      }
      const live = await this.#init.live(digest)
      if (this.#state !== 'preparing') return
      if (live === undefined) {
        this.#init.onUnknown?.(this.peerId, digest)
        this.#reject(0, BlobUnknownError.code)
        return
      }
      // Checked after the transfer is found: it records the blob's access before it publishes.
      if (!(await this.#mayServe(digest, proof, signal))) return
      this.#describePartial(live)
      this.#init.onInterest(this.peerId, digest)
    } catch (err) {
      this.abort(toError(err))
    }
  }

  /**
   * True when the client may have the blob: it is public, or the proof verifies against a key
   * recorded for it. Otherwise answers `BLOB_UNKNOWN` (not `ACCESS_DENIED`: that would tell
   * anyone sending a made-up proof that this node holds the blob) and closes. A blob with no
   * record in the store counts as private: there is nothing to serve from it anyway.
   */
  async #mayServe(digest: string, proof: Uint8Array | undefined, signal: AbortSignal): Promise<boolean> {
    const access = await this.#init.store.access(digest, { signal })
    if (this.#state !== 'preparing') return false
    if (access !== undefined && !access.private) return true
    if (verifyAccessProof(access?.keys ?? [], proof, digest, this.peerId, this.#init.localPeerId)) return true
    const reason = proof === undefined ? 'no-proof' : 'bad-proof'
    const err = new AccessDeniedError(`peer ${this.peerId} showed no access to ${digest} (${reason})`)
    this.#log.debug({ peer: this.peerId, digest, code: err.code, reason }, 'private blob refused')
    this.#init.onDenied?.(reason)
    this.#reject(0, BlobUnknownError.code)
    return false
  }

  async #describeComplete(info: BlobInfo, signal: AbortSignal): Promise<void> {
    const digest = info.digest
    const pieces = await this.#init.store.pieces(digest, { signal })
    if (this.#state !== 'preparing') return
    if (pieces.length !== info.pieceCount || pieces.some((p, i) => p.index !== i)) {
      this.#log.warn({ digest, held: pieces.length }, 'complete blob without all its pieces')
      this.#reject(0, BlobUnknownError.code)
      return
    }
    const bytes = encodePieceList({
      digest,
      size: info.size,
      pieceSize: info.pieceSize,
      hashes: pieces.map((p) => p.sha256)
    })
    this.#serving(info.size, info.pieceSize, info.pieceCount)
    sendFrame(this.#stream, { type: 'piece-list', bytes })
    sendFrame(this.#stream, { type: 'bitfield', bits: Bitfield.all(info.pieceCount).toBytes() })
    this.#log.debug({ digest, pieces: info.pieceCount }, 'serving blob')
    this.sharePeers()
    this.#init.onServing?.(digest)
    void this.#pump()
  }

  #describePartial(live: LiveBlob): void {
    this.#live = live
    this.#serving(live.size, live.pieceSize, pieceCount(live.size, live.pieceSize))
    sendFrame(this.#stream, { type: 'partial', size: live.size, pieceSize: live.pieceSize })
    // Subscribed before the snapshot is sent: nothing that happens meanwhile is lost (a
    // duplicate `have` is harmless, the client ignores one it already knows).
    this.#unsubscribe = live.onEvent((e) => this.#onLive(e))
    for (const [index, sha256] of live.held()) sendFrame(this.#stream, { type: 'have', index, sha256 })
    for (const index of live.fetching()) sendFrame(this.#stream, { type: 'fetching', index })
    this.#log.debug({ digest: live.digest }, 'serving partial blob')
    this.sharePeers()
    this.#init.onServing?.(live.digest)
    void this.#pump()
  }

  /**
   * Peer exchange: tells the client of the peers on this blob it has not heard of from us yet.
   * Called once the session serves, and again by the exchange when it meets more of them.
   */
  sharePeers(): void {
    const known = this.#init.swarmPeers
    if (known === undefined || this.#state !== 'serving') return
    const peers = known(this.#digest, this.peerId).filter((p) => !this.#told.has(p.peerId))
    if (peers.length === 0) return
    for (const p of peers) this.#told.add(p.peerId)
    this.#log.debug({ digest: this.#digest, peer: this.peerId, peers: peers.length }, 'peer exchange sent')
    try {
      sendFrame(this.#stream, { type: 'peers', peers })
    } catch (err) {
      this.abort(toError(err))
    }
  }

  #onLive(e: LiveBlobEvent): void {
    if (this.#state !== 'serving') return
    try {
      if (e.type === 'have') sendFrame(this.#stream, { type: 'have', index: e.index, sha256: e.sha256 })
      else if (e.type === 'fetching') sendFrame(this.#stream, { type: 'fetching', index: e.index })
      else if (e.complete) this.#stopFollowing()
      else this.#reject(0, BlobUnknownError.code)
    } catch (err) {
      this.abort(toError(err))
    }
  }

  #stopFollowing(): void {
    this.#unsubscribe?.()
    this.#unsubscribe = undefined
    this.#live = undefined
  }

  #serving(size: number, pieceSize: number, count: number): void {
    this.#size = size
    this.#pieceSize = pieceSize
    this.#count = count
    this.#init.stats.sessionsServed++
    this.#state = 'serving'
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
    this.#stopFollowing()
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
    if (index >= this.#count) {
      sendFrame(this.#stream, { type: 'reject', index, code: RangeNotSatisfiableError.code })
      return
    }
    const partial = this.#live !== undefined
    if (partial && this.#live?.hashOf(index) === undefined) {
      sendFrame(this.#stream, { type: 'reject', index, code: BlobUnknownError.code })
      return
    }
    const uploads = this.#init.uploads
    if (uploads !== undefined && uploads.active >= uploads.limit) {
      sendFrame(this.#stream, { type: 'reject', index, code: PieceBusyError.code })
      return
    }
    if (uploads !== undefined) uploads.active++
    try {
      await this.#sendPiece(index, partial)
    } finally {
      if (uploads !== undefined) uploads.active--
    }
  }

  async #sendPiece(index: number, partial: boolean): Promise<void> {
    const range = pieceRange(index, this.#size, this.#pieceSize)
    const signal = this.#abort.signal
    let data: Uint8Array
    try {
      await this.#init.upload?.take(range.end - range.start, signal)
      data = await this.#init.store.read(this.#digest, range, { signal })
    } catch (err) {
      if (this.#state !== 'serving') return
      const e = toShoalError(err)
      this.#log.warn({ err: e, digest: this.#digest, index }, 'cannot read a piece to serve')
      sendFrame(this.#stream, { type: 'reject', index, code: e.code })
      return
    }
    if (this.#state !== 'serving') return
    const more = sendFrame(this.#stream, { type: 'piece', index, data })
    const stats = this.#init.stats
    stats.piecesServed++
    stats.bytesServed += data.length
    this.piecesServed++
    this.bytesServed += data.length
    if (partial) stats.partialPiecesServed++
    this.#init.onServed(data.length, partial)
    if (!more) await waitForDrain(this.#stream, signal)
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
    this.#stopFollowing()
    this.#releaseLease()
    this.#init.onClosed(this)
  }
}
