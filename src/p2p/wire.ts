/**
 * The piece protocol's messages and framing. A frame is an unsigned varint length followed by
 * that many bytes: a 1-byte message type and the message's fields (varints, raw 32-byte hashes,
 * raw payloads). Every limit is checked from the length prefix and type byte, before the body is
 * buffered, so a peer cannot make us hold more than one legitimate frame.
 */
import { KiB, MAX_PIECE_SIZE } from '../constants.ts'
import { ACCESS_PROOF_BYTES } from '../content/access.ts'
import { isDigest } from '../content/digest.ts'
import { MAX_PIECE_LIST_BYTES, MAX_PIECE_LIST_PIECES } from '../content/piece-list.ts'
import { ProtocolViolationError, type ShoalError } from '../errors.ts'

/** A message of the piece protocol. */
export type WireMessage =
  /**
   * Which blob this stream is about (and, when known, the piece list id the sender holds). `proof`
   * (32 bytes, content/access.ts) shows the client holds a manifest referencing the blob: a
   * private blob is served only against one.
   */
  | { type: 'hello'; digest: string; pieceListId?: string; proof?: Uint8Array }
  /** An encoded piece list (see content/piece-list.ts); the receiver decodes and checks it. */
  | { type: 'piece-list'; bytes: Uint8Array }
  /** The sender's have-bitfield, in `Bitfield.toBytes()` form. */
  | { type: 'bitfield'; bits: Uint8Array }
  /** The sender has verified piece `index`; its hash travels with it (cold swarm). */
  | { type: 'have'; index: number; sha256: string }
  /** The sender is fetching piece `index` from the registry: do not fetch it too. */
  | { type: 'fetching'; index: number }
  /** Please send piece `index`. */
  | { type: 'request'; index: number }
  /** The bytes of piece `index`. */
  | { type: 'piece'; index: number; data: Uint8Array }
  /** Forget my request for piece `index`. */
  | { type: 'cancel'; index: number }
  /** The sender is at capacity: retry after this long. */
  | { type: 'busy'; retryAfterMs: number }
  /** The sender will not serve requests until it unchokes. */
  | { type: 'choke' }
  /** The sender will serve requests again. */
  | { type: 'unchoke' }
  /** The sender will not serve piece `index`; `code` is a Shoal error code such as `BLOB_UNKNOWN`. */
  | { type: 'reject'; index: number; code: string }
  /**
   * The sender is still fetching the blob: its geometry, in place of a piece list. `have` (each
   * with its piece's hash) and `fetching` frames follow, for what it holds and as it progresses.
   */
  | { type: 'partial'; size: number; pieceSize: number }
  /**
   * Peer exchange: other peers the sender knows to be on this blob (fetching or holding it),
   * with addresses to dial them at, so a node new to a swarm meets it without the DHT.
   */
  | { type: 'peers'; peers: WirePeer[] }

/** A peer in a `peers` message: its id (base58btc) and up to `MAX_PEER_ADDRESSES` multiaddrs. */
export interface WirePeer {
  peerId: string
  addresses: string[]
}

/** The `type` of each message. */
export type WireMessageType = WireMessage['type']

/** Largest frame of any message but `piece` and `piece-list` (a 32 KiB bitfield fits). */
export const MAX_CONTROL_FRAME = 64 * KiB
/** Largest `piece` frame: a whole piece plus type and index. */
export const MAX_PIECE_FRAME = MAX_PIECE_SIZE + 16
/** Largest `piece-list` frame: the largest piece list plus its type byte. */
export const MAX_PIECE_LIST_FRAME = MAX_PIECE_LIST_BYTES + 16
/** Longest `busy` wait a peer may ask for. */
export const MAX_RETRY_AFTER_MS = 2 ** 31 - 1

const MAX_FRAME = Math.max(MAX_CONTROL_FRAME, MAX_PIECE_FRAME, MAX_PIECE_LIST_FRAME)
const MAX_INDEX = MAX_PIECE_LIST_PIECES - 1
const MAX_CODE_LENGTH = 64
const CODE_RE = /^[A-Z][A-Z0-9_]*$/
const HEX_RE = /^[a-f0-9]{64}$/
// The hello's flag byte: which optional fields follow the digest, in this order. A hello from
// before proofs has 0 or 1 and decodes as it did; any other bit is a violation.
const HELLO_PIECE_LIST_ID = 1
const HELLO_PROOF = 2
const HELLO_FLAGS = HELLO_PIECE_LIST_ID | HELLO_PROOF
/** Peers in one `peers` message at most, addresses per peer, and their lengths. */
export const MAX_EXCHANGED_PEERS = 16
export const MAX_PEER_ADDRESSES = 4
const MAX_PEER_ID_LENGTH = 128
const MAX_ADDRESS_LENGTH = 256
const PEER_ID_RE = /^[1-9A-HJ-NP-Za-km-z]+$/
// A varint of 8 bytes carries 56 bits, more than any safe integer: longer is malformed.
const MAX_VARINT_BYTES = 8

const TYPE_CODES = {
  hello: 1,
  'piece-list': 2,
  bitfield: 3,
  have: 4,
  fetching: 5,
  request: 6,
  piece: 7,
  cancel: 8,
  busy: 9,
  choke: 10,
  unchoke: 11,
  reject: 12,
  partial: 13,
  peers: 14
} as const satisfies Record<WireMessageType, number>

const T = TYPE_CODES

/**
 * Encodes a message as a frame split into parts whose concatenation is the frame. Bulk payloads
 * (`piece`, `piece-list`, `bitfield`) are their own part, not copied, so a sender can write
 * them after the header.
 */
export function encodeFrameParts(msg: WireMessage): Uint8Array[] {
  switch (msg.type) {
    case 'hello': {
      const { pieceListId: id, proof } = msg
      checkDigest(msg.digest, 'hello digest')
      if (id !== undefined) checkDigest(id, 'hello piece list id')
      if (proof !== undefined && proof.length !== ACCESS_PROOF_BYTES)
        cannot(`a proof of ${proof.length} bytes`)
      const flags = (id === undefined ? 0 : HELLO_PIECE_LIST_ID) | (proof === undefined ? 0 : HELLO_PROOF)
      const body = [T.hello, ...hexBytes(msg.digest.slice(7)), flags]
      if (id !== undefined) body.push(...hexBytes(id.slice(7)))
      if (proof !== undefined) body.push(...proof)
      return [frame(body)]
    }
    case 'piece-list':
      if (msg.bytes.length > MAX_PIECE_LIST_BYTES) cannot(`a piece list of ${msg.bytes.length} bytes`)
      return [header(1 + msg.bytes.length, [T['piece-list']]), msg.bytes]
    case 'bitfield':
      if (msg.bits.length > MAX_CONTROL_FRAME - 1) cannot(`a bitfield of ${msg.bits.length} bytes`)
      return [header(1 + msg.bits.length, [T.bitfield]), msg.bits]
    case 'have':
      if (!HEX_RE.test(msg.sha256)) cannot(`have with hash "${msg.sha256}"`)
      return [frame([T.have, ...varint(index(msg.index)), ...hexBytes(msg.sha256)])]
    case 'fetching':
    case 'request':
    case 'cancel':
      return [frame([T[msg.type], ...varint(index(msg.index))])]
    case 'piece': {
      const n = msg.data.length
      if (n < 1 || n > MAX_PIECE_SIZE) cannot(`a piece of ${n} bytes`)
      const head = [T.piece, ...varint(index(msg.index))]
      return [header(head.length + n, head), msg.data]
    }
    case 'busy': {
      const ms = msg.retryAfterMs
      if (!Number.isSafeInteger(ms) || ms < 0 || ms > MAX_RETRY_AFTER_MS) cannot(`busy for ${ms} ms`)
      return [frame([T.busy, ...varint(ms)])]
    }
    case 'choke':
    case 'unchoke':
      return [frame([T[msg.type]])]
    case 'reject': {
      if (msg.code.length > MAX_CODE_LENGTH || !CODE_RE.test(msg.code)) cannot(`reject code "${msg.code}"`)
      const code = Buffer.from(msg.code, 'latin1')
      return [frame([T.reject, ...varint(index(msg.index)), ...varint(code.length), ...code])]
    }
    case 'partial':
      if (!Number.isSafeInteger(msg.size) || msg.size < 0) cannot(`a partial blob of ${msg.size} bytes`)
      if (!Number.isSafeInteger(msg.pieceSize) || msg.pieceSize < 1 || msg.pieceSize > MAX_PIECE_SIZE) {
        cannot(`pieces of ${msg.pieceSize} bytes`)
      }
      return [frame([T.partial, ...varint(msg.size), ...varint(msg.pieceSize)])]
    case 'peers': {
      if (msg.peers.length > MAX_EXCHANGED_PEERS) cannot(`${msg.peers.length} peers in one message`)
      const body: number[] = [T.peers, ...varint(msg.peers.length)]
      for (const p of msg.peers) {
        checkPeer(p, cannot)
        body.push(...text(p.peerId), ...varint(p.addresses.length))
        for (const a of p.addresses) body.push(...text(a))
      }
      return [frame(body)]
    }
    default:
      return cannot(`message type "${(msg as { type: unknown }).type}"`)
  }
}

/** Encodes a message as one frame (a single buffer; `encodeFrameParts` avoids copying payloads). */
export function encodeFrame(msg: WireMessage): Uint8Array {
  const parts = encodeFrameParts(msg)
  if (parts.length === 1) return parts[0] as Uint8Array
  return Buffer.concat(parts)
}

/**
 * Splits a byte stream into messages. `push()` chunks as they arrive (a frame may span many
 * chunks, a chunk may hold many frames), then drain `frames()`. Anything malformed, of an
 * unknown type or over its size limit throws `ProtocolViolationError`, oversized frames as soon
 * as their length prefix and type byte arrive; after a throw the decoder stays failed.
 *
 * Payloads (`piece.data`, `piece-list.bytes`, `bitfield.bits`) are views into the pushed chunks
 * when a frame arrived within one chunk, and a single copy otherwise: do not reuse pushed buffers.
 */
export class FrameDecoder {
  #chunks: Uint8Array[] = []
  #buffered = 0
  /** Body length of the frame being read, once its prefix is consumed. */
  #need: number | undefined
  #failed: ShoalError | undefined

  /** Bytes pushed and not yet returned as messages. */
  get buffered(): number {
    return this.#buffered
  }

  /** Adds received bytes: a `Uint8Array`, or an iterable of them (such as a `Uint8ArrayList`). */
  push(chunk: Uint8Array | Iterable<Uint8Array>): void {
    if (this.#failed) throw this.#failed
    if (chunk instanceof Uint8Array) {
      this.#add(chunk)
    } else {
      for (const c of chunk) this.#add(c)
    }
  }

  /** Yields every complete message buffered so far. */
  *frames(): Generator<WireMessage, void, undefined> {
    if (this.#failed) throw this.#failed
    try {
      while (true) {
        if (this.#need === undefined) {
          const prefix = this.#readPrefix()
          if (prefix === undefined) return
          const [length, bytes] = prefix
          if (length === 0) violation('empty frame')
          if (length > MAX_FRAME) violation(`frame of ${length} bytes exceeds every limit`)
          this.#skip(bytes)
          this.#need = length
        }
        if (this.#buffered === 0) return
        const type = this.#chunks[0]?.[0] as number
        const limit = limitOf(type)
        if (this.#need > limit) violation(`${nameOf(type)} frame of ${this.#need} bytes exceeds ${limit}`)
        if (this.#buffered < this.#need) return
        const body = this.#take(this.#need)
        this.#need = undefined
        yield decodeBody(body)
      }
    } catch (err) {
      if (err instanceof ProtocolViolationError) this.#failed = err
      throw err
    }
  }

  /** Declares the stream ended: throws `ProtocolViolationError` when a partial frame is left. */
  end(): void {
    if (this.#failed) throw this.#failed
    if (this.#buffered > 0 || this.#need !== undefined) {
      this.#failed = new ProtocolViolationError(
        `stream ended inside a frame (${this.#buffered} of ${this.#need ?? '?'} bytes)`
      )
      throw this.#failed
    }
  }

  #add(chunk: Uint8Array): void {
    if (chunk.length === 0) return
    this.#chunks.push(chunk)
    this.#buffered += chunk.length
  }

  /** The length prefix, peeked across chunks: [value, bytes] or undefined when incomplete. */
  #readPrefix(): [number, number] | undefined {
    let value = 0
    let mul = 1
    let i = 0
    for (const chunk of this.#chunks) {
      for (const b of chunk) {
        value += (b & 0x7f) * mul
        i++
        if ((b & 0x80) === 0) return [value, i]
        mul *= 128
        // Checked per byte so a stream of continuation bytes fails at once.
        if (value > MAX_FRAME || i >= 4) violation('frame length prefix exceeds every limit')
      }
    }
    return undefined
  }

  #skip(n: number): void {
    this.#buffered -= n
    while (n > 0) {
      const first = this.#chunks[0] as Uint8Array
      if (first.length <= n) {
        this.#chunks.shift()
        n -= first.length
      } else {
        this.#chunks[0] = first.subarray(n)
        n = 0
      }
    }
  }

  /** Removes and returns the next `n` bytes: a view when they lie in one chunk, else one copy. */
  #take(n: number): Uint8Array {
    const first = this.#chunks[0] as Uint8Array
    if (first.length >= n) {
      const out = first.subarray(0, n)
      this.#skip(n)
      return out
    }
    const out = new Uint8Array(n)
    let at = 0
    while (at < n) {
      const chunk = this.#chunks[0] as Uint8Array
      const part = Math.min(chunk.length, n - at)
      out.set(part === chunk.length ? chunk : chunk.subarray(0, part), at)
      at += part
      this.#skip(part)
    }
    return out
  }
}

/** Decodes one frame body (type byte + fields). */
function decodeBody(body: Uint8Array): WireMessage {
  const r = new Reader(body)
  const type = r.byte()
  let msg: WireMessage
  switch (type) {
    case T.hello: {
      const digest = `sha256:${r.hex()}`
      const flags = r.byte()
      if ((flags & ~HELLO_FLAGS) !== 0) violation(`hello has flags ${flags}`)
      const hello: WireMessage = { type: 'hello', digest }
      if (flags & HELLO_PIECE_LIST_ID) hello.pieceListId = `sha256:${r.hex()}`
      // A copy: the proof outlives the chunk it arrived in.
      if (flags & HELLO_PROOF) hello.proof = r.bytes(ACCESS_PROOF_BYTES).slice()
      msg = hello
      break
    }
    case T['piece-list']:
      return { type: 'piece-list', bytes: r.rest() }
    case T.bitfield:
      return { type: 'bitfield', bits: r.rest() }
    case T.have:
      msg = { type: 'have', index: r.index(), sha256: r.hex() }
      break
    case T.fetching:
      msg = { type: 'fetching', index: r.index() }
      break
    case T.request:
      msg = { type: 'request', index: r.index() }
      break
    case T.cancel:
      msg = { type: 'cancel', index: r.index() }
      break
    case T.piece: {
      const i = r.index()
      const data = r.rest()
      if (data.length === 0) violation(`piece ${i} is empty`)
      return { type: 'piece', index: i, data }
    }
    case T.busy: {
      const ms = r.varint()
      if (ms > MAX_RETRY_AFTER_MS) violation(`busy for ${ms} ms`)
      msg = { type: 'busy', retryAfterMs: ms }
      break
    }
    case T.choke:
      msg = { type: 'choke' }
      break
    case T.unchoke:
      msg = { type: 'unchoke' }
      break
    case T.reject: {
      const i = r.index()
      const len = r.varint()
      if (len > MAX_CODE_LENGTH) violation(`reject code of ${len} bytes`)
      const code = Buffer.from(r.bytes(len)).toString('latin1')
      if (!CODE_RE.test(code)) violation('reject code is not an error code')
      msg = { type: 'reject', index: i, code }
      break
    }
    case T.partial: {
      const size = r.varint()
      const pieceSize = r.varint()
      if (pieceSize < 1 || pieceSize > MAX_PIECE_SIZE)
        violation(`partial blob with pieces of ${pieceSize} bytes`)
      msg = { type: 'partial', size, pieceSize }
      break
    }
    case T.peers: {
      const count = r.varint()
      if (count > MAX_EXCHANGED_PEERS) violation(`${count} peers in one message`)
      const peers: WirePeer[] = []
      for (let i = 0; i < count; i++) {
        const peerId = r.text(MAX_PEER_ID_LENGTH)
        const n = r.varint()
        if (n > MAX_PEER_ADDRESSES) violation(`a peer with ${n} addresses`)
        const addresses: string[] = []
        for (let k = 0; k < n; k++) addresses.push(r.text(MAX_ADDRESS_LENGTH))
        const peer = { peerId, addresses }
        checkPeer(peer, violation)
        peers.push(peer)
      }
      msg = { type: 'peers', peers }
      break
    }
    default:
      return violation(`unknown message type ${type}`)
  }
  r.done(msg.type)
  return msg
}

/** Reads fields of one complete body; running short is a violation. */
class Reader {
  #at = 0
  constructor(readonly buf: Uint8Array) {}

  byte(): number {
    return this.bytes(1)[0] as number
  }

  bytes(n: number): Uint8Array {
    if (this.#at + n > this.buf.length) violation(`frame truncated (${this.buf.length} bytes)`)
    const out = this.buf.subarray(this.#at, this.#at + n)
    this.#at += n
    return out
  }

  hex(): string {
    return Buffer.from(this.bytes(32)).toString('hex')
  }

  varint(): number {
    let value = 0
    let mul = 1
    for (let i = 0; i < MAX_VARINT_BYTES; i++) {
      const b = this.byte()
      value += (b & 0x7f) * mul
      if ((b & 0x80) === 0) {
        if (b === 0 && i > 0) violation('varint is not minimally encoded')
        if (!Number.isSafeInteger(value)) violation('varint exceeds a safe integer')
        return value
      }
      mul *= 128
    }
    return violation('varint is too long')
  }

  /** A length-prefixed latin1 string of at most `max` bytes. */
  text(max: number): string {
    const len = this.varint()
    if (len > max) violation(`a string of ${len} bytes exceeds ${max}`)
    return Buffer.from(this.bytes(len)).toString('latin1')
  }

  index(): number {
    const i = this.varint()
    if (i > MAX_INDEX) violation(`piece index ${i} exceeds ${MAX_INDEX}`)
    return i
  }

  rest(): Uint8Array {
    return this.bytes(this.buf.length - this.#at)
  }

  done(type: string): void {
    if (this.#at !== this.buf.length)
      violation(`${type} frame has ${this.buf.length - this.#at} trailing bytes`)
  }
}

function limitOf(type: number): number {
  if (type === T.piece) return MAX_PIECE_FRAME
  if (type === T['piece-list']) return MAX_PIECE_LIST_FRAME
  if (type >= T.hello && type <= T.peers) return MAX_CONTROL_FRAME
  return violation(`unknown message type ${type}`)
}

function nameOf(type: number): string {
  return Object.entries(TYPE_CODES).find(([, code]) => code === type)?.[0] ?? `type ${type}`
}

/** Checks a peer of a `peers` message; `fail` is `cannot` when encoding, `violation` decoding. */
function checkPeer(p: WirePeer, fail: (what: string) => never): void {
  if (p.peerId.length > MAX_PEER_ID_LENGTH || !PEER_ID_RE.test(p.peerId))
    fail(`peer id "${p.peerId.slice(0, 80)}"`)
  if (p.addresses.length > MAX_PEER_ADDRESSES) fail(`a peer with ${p.addresses.length} addresses`)
  for (const a of p.addresses) {
    // Printable ASCII only: these strings end up in logs and dials.
    if (a.length > MAX_ADDRESS_LENGTH || !/^\/[\x21-\x7e]*$/.test(a)) fail(`peer address "${a.slice(0, 80)}"`)
  }
}

/** A string as a varint length and its latin1 bytes. */
function text(s: string): number[] {
  const bytes = Buffer.from(s, 'latin1')
  return [...varint(bytes.length), ...bytes]
}

function violation(message: string): never {
  throw new ProtocolViolationError(message)
}

function cannot(what: string): never {
  throw new ProtocolViolationError(`cannot encode ${what}`)
}

function checkDigest(digest: string, what: string): void {
  if (!isDigest(digest)) cannot(`${what} "${digest}"`)
}

function index(i: number): number {
  if (!Number.isSafeInteger(i) || i < 0 || i > MAX_INDEX) cannot(`piece index ${i}`)
  return i
}

function hexBytes(hex: string): Uint8Array {
  return Buffer.from(hex, 'hex')
}

function varint(n: number): number[] {
  const out: number[] = []
  while (n >= 128) {
    out.push((n % 128) | 0x80)
    n = Math.floor(n / 128)
  }
  out.push(n)
  return out
}

/** A frame whose body is `body`, in one buffer. */
function frame(body: ArrayLike<number>): Uint8Array {
  const out = header(body.length, [])
  const full = new Uint8Array(out.length + body.length)
  full.set(out)
  full.set(body, out.length)
  return full
}

/** Length prefix for a body of `length` bytes, followed by the body's first bytes `head`. */
function header(length: number, head: ArrayLike<number>): Uint8Array {
  const prefix = varint(length)
  const out = new Uint8Array(prefix.length + head.length)
  out.set(prefix)
  out.set(head, prefix.length)
  return out
}
