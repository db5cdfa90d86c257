import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import { KiB, MAX_PIECE_SIZE, MiB } from '../../../src/constants.ts'
import { digestOf } from '../../../src/content/digest.ts'
import { buildPieceList, decodePieceList, encodePieceList } from '../../../src/content/piece-list.ts'
import { Bitfield } from '../../../src/p2p/bitfield.ts'
import {
  encodeFrame,
  encodeFrameParts,
  FrameDecoder,
  MAX_CONTROL_FRAME,
  MAX_PIECE_FRAME,
  MAX_PIECE_LIST_FRAME,
  type WireMessage
} from '../../../src/p2p/wire.ts'

const hex = () => randomBytes(32).toString('hex')
const digest = () => `sha256:${hex()}`
const index = () => Math.floor(Math.random() * 2 ** 18)

function violation(re?: RegExp) {
  return (err: unknown) => {
    assert.equal((err as { code?: string }).code, 'PROTOCOL_VIOLATION', String(err))
    if (re) assert.match((err as Error).message, re)
    return true
  }
}

/** Plain objects with plain Uint8Arrays, so deepEqual ignores Buffer vs Uint8Array. */
function norm(msg: WireMessage): unknown {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(msg)) out[k] = v instanceof Uint8Array ? [...v] : v
  return out
}

function decodeAll(...chunks: Uint8Array[]): WireMessage[] {
  const d = new FrameDecoder()
  const out: WireMessage[] = []
  for (const c of chunks) {
    d.push(c)
    out.push(...d.frames())
  }
  d.end()
  return out
}

function samples(): WireMessage[] {
  const data = randomBytes(3 * 64 * KiB + 7)
  const plBytes = encodePieceList(buildPieceList(digestOf(data), data, 64 * KiB))
  return [
    { type: 'hello', digest: digest() },
    { type: 'hello', digest: digest(), pieceListId: digest() },
    { type: 'hello', digest: digest(), proof: randomBytes(32) },
    { type: 'hello', digest: digest(), pieceListId: digest(), proof: randomBytes(32) },
    { type: 'piece-list', bytes: plBytes },
    { type: 'bitfield', bits: Bitfield.fromBytes(Uint8Array.of(0xa0), 3).toBytes() },
    { type: 'bitfield', bits: new Uint8Array(0) },
    { type: 'have', index: 0, sha256: hex() },
    { type: 'have', index: 2 ** 18 - 1, sha256: hex() },
    { type: 'fetching', index: 127 },
    { type: 'request', index: 128 },
    { type: 'piece', index: 5, data: randomBytes(1000) },
    { type: 'piece', index: 0, data: new Uint8Array([7]) },
    { type: 'cancel', index: 16384 },
    { type: 'busy', retryAfterMs: 0 },
    { type: 'busy', retryAfterMs: 2 ** 31 - 1 },
    { type: 'choke' },
    { type: 'unchoke' },
    { type: 'reject', index: 3, code: 'BLOB_UNKNOWN' },
    { type: 'partial', size: 0, pieceSize: 1 },
    { type: 'partial', size: 2 ** 40, pieceSize: 4 * 1024 * 1024 }
  ]
}

function randomMessage(): WireMessage {
  switch (Math.floor(Math.random() * 13)) {
    case 0:
      return Math.random() < 0.5
        ? { type: 'hello', digest: digest() }
        : Math.random() < 0.5
          ? { type: 'hello', digest: digest(), pieceListId: digest() }
          : { type: 'hello', digest: digest(), proof: randomBytes(32) }
    case 1:
      return { type: 'piece-list', bytes: randomBytes(Math.floor(Math.random() * 4000)) }
    case 2:
      return { type: 'bitfield', bits: randomBytes(Math.floor(Math.random() * 300)) }
    case 3:
      return { type: 'have', index: index(), sha256: hex() }
    case 4:
      return { type: 'fetching', index: index() }
    case 5:
      return { type: 'request', index: index() }
    case 6:
      return { type: 'piece', index: index(), data: randomBytes(1 + Math.floor(Math.random() * 5000)) }
    case 7:
      return { type: 'cancel', index: index() }
    case 8:
      return { type: 'busy', retryAfterMs: Math.floor(Math.random() * 2 ** 31) }
    case 9:
      return { type: 'choke' }
    case 10:
      return { type: 'unchoke' }
    case 11:
      return { type: 'partial', size: Math.floor(Math.random() * 2 ** 40), pieceSize: 1 + index() }
    default:
      return { type: 'reject', index: index(), code: Math.random() < 0.5 ? 'BLOB_UNKNOWN' : 'STORE_FULL' }
  }
}

function varintBytes(n: number): number[] {
  const out: number[] = []
  for (; n >= 128; n = Math.floor(n / 128)) out.push((n % 128) | 0x80)
  out.push(n)
  return out
}

/** Splits bytes at random points (including empty pieces). */
function randomSplit(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = []
  let at = 0
  while (at < bytes.length) {
    const n = Math.floor(Math.random() * Math.min(bytes.length - at + 1, 2000))
    out.push(bytes.subarray(at, at + n))
    at += n
  }
  return out
}

describe('wire', () => {
  it('round-trips every message type', () => {
    const msgs = samples()
    for (const m of msgs) {
      assert.deepEqual(decodeAll(encodeFrame(m)).map(norm), [norm(m)], m.type)
    }
    const types = new Set(msgs.map((m) => m.type))
    assert.equal(types.size, 13)
  })

  it('decodes a piece list carried in a frame', () => {
    const data = randomBytes(200 * KiB)
    const pl = buildPieceList(digestOf(data), data, 64 * KiB)
    const [msg] = decodeAll(encodeFrame({ type: 'piece-list', bytes: encodePieceList(pl) }))
    assert.equal(msg?.type, 'piece-list')
    if (msg?.type === 'piece-list') assert.deepEqual(decodePieceList(msg.bytes, { digest: pl.digest }), pl)
  })

  it('decodes a stream split byte by byte', () => {
    const msgs = samples()
    const all = Buffer.concat(msgs.map(encodeFrame))
    const chunks = Array.from({ length: all.length }, (_, i) => all.subarray(i, i + 1))
    assert.deepEqual(decodeAll(...chunks).map(norm), msgs.map(norm))
  })

  it('decodes several frames in one chunk, and a frame spread over several pushes', () => {
    const msgs = samples()
    const all = Buffer.concat(msgs.map(encodeFrame))
    assert.deepEqual(decodeAll(all).map(norm), msgs.map(norm))
    const d = new FrameDecoder()
    d.push([all.subarray(0, 10), all.subarray(10, 500)])
    d.push(all.subarray(500))
    assert.deepEqual([...d.frames()].map(norm), msgs.map(norm))
    assert.equal(d.buffered, 0)
  })

  it('hands out piece data without copying when the frame arrived in one chunk', () => {
    const data = randomBytes(10_000)
    const frame = encodeFrame({ type: 'piece', index: 1, data })
    const [msg] = decodeAll(frame)
    assert.ok(msg?.type === 'piece')
    assert.equal(msg.data.buffer, frame.buffer)
    const parts = encodeFrameParts({ type: 'piece', index: 1, data })
    assert.equal(parts.length, 2)
    assert.equal(parts[1], data)
  })

  it('handles a full-size piece', () => {
    const data = randomBytes(MAX_PIECE_SIZE)
    const frame = encodeFrame({ type: 'piece', index: 9, data })
    assert.ok(frame.length <= MAX_PIECE_FRAME)
    const [msg] = decodeAll(frame.subarray(0, 3), frame.subarray(3, MiB), frame.subarray(MiB))
    assert.ok(msg?.type === 'piece' && msg.index === 9 && Buffer.compare(msg.data, data) === 0)
  })

  it('rejects an oversized length prefix before the body arrives', () => {
    // 128 MiB, more than any frame may be.
    const d = new FrameDecoder()
    d.push(Uint8Array.of(0x80, 0x80, 0x80, 0x40))
    assert.throws(() => [...d.frames()], violation(/exceeds/))
    // A run of continuation bytes fails without waiting for the end of the prefix.
    const d2 = new FrameDecoder()
    d2.push(new Uint8Array(5).fill(0xff))
    assert.throws(() => [...d2.frames()], violation())
    // The decoder stays failed.
    assert.throws(() => d.push(Uint8Array.of(1)), violation())
    assert.throws(() => [...d.frames()], violation())
  })

  it('rejects a control frame over 64 KiB as soon as its type byte arrives', () => {
    const big = encodeFrame({ type: 'piece', index: 0, data: new Uint8Array(MAX_CONTROL_FRAME) })
    const d = new FrameDecoder()
    d.push(big.subarray(0, 3)) // length prefix only
    assert.deepEqual([...d.frames()], [])
    d.push(Uint8Array.of(4)) // type: have
    assert.throws(() => [...d.frames()], violation(/have frame of \d+ bytes exceeds 65536/))
    // The same length with the piece type is fine.
    assert.equal(decodeAll(big).length, 1)
    // A piece-list frame over its limit (yet under the piece limit) is refused from its header.
    const over = new FrameDecoder()
    over.push(Uint8Array.from([...varintBytes(MAX_PIECE_LIST_FRAME + 1), 2]))
    assert.throws(() => [...over.frames()], violation(/piece-list frame/))
    const tooBig = new FrameDecoder()
    tooBig.push(Uint8Array.from([...varintBytes(MAX_PIECE_FRAME + 1), 7]))
    assert.throws(() => [...tooBig.frames()], violation(/exceeds/))
  })

  it('rejects unknown types, empty frames and malformed bodies', () => {
    const bad = (bytes: number[], re?: RegExp) =>
      assert.throws(() => decodeAll(Uint8Array.from(bytes)), violation(re))
    bad([1, 0x63], /unknown message type 99/)
    bad([1, 0], /unknown message type 0/)
    bad([0], /empty frame/)
    bad([2, 10, 1], /trailing/) // choke with a stray byte
    bad([1, 4], /truncated/) // have without index
    bad([2, 4, 1], /truncated/) // have without hash
    bad([3, 6, 0x80, 0x00], /minimally/) // request index 0 encoded in two bytes
    bad([4, 6, 0x80, 0x80, 0x10], /exceeds/) // request index 2^18
    bad([1, 7, 0], /truncated/) // piece without index
    bad([2, 7, 0], /empty/) // piece without data
    bad([34, 1, ...new Array(32).fill(0), 4], /flags 4/) // hello with an unknown flag
    bad([34, 1, ...new Array(32).fill(0), 2], /truncated/) // hello announcing a proof it lacks
    bad([65, 1, ...new Array(32).fill(0), 2, ...new Array(31).fill(7)], /truncated/) // a short proof
    bad([67, 1, ...new Array(32).fill(0), 2, ...new Array(33).fill(7)], /trailing/) // a long proof
    bad([66, 1, ...new Array(32).fill(0), 3, ...new Array(32).fill(7)], /truncated/) // id and proof: 32 of 64
    bad([4, 12, 0, 1, 0x61], /error code/) // reject code "a"
    bad([3, 12, 0, 100], /reject code of/) // reject code too long
    bad([6, 9, 0xff, 0xff, 0xff, 0xff, 0x0f], /busy/) // busy over 2^31 - 1
    bad([3, 13, 5, 0], /pieces of 0/) // partial with pieces of 0 bytes
    bad([2, 13, 5], /truncated/) // partial without a piece size
    // Truncated input: the stream ends inside a frame.
    const frame = encodeFrame({ type: 'have', index: 1, sha256: hex() })
    assert.throws(() => decodeAll(frame.subarray(0, frame.length - 1)), violation(/ended inside/))
    assert.throws(() => decodeAll(frame.subarray(0, 1)), violation(/ended inside/))
  })

  it('decodes a hello from before proofs as it did, and places a proof after the piece list id', () => {
    const d = digest()
    const id = digest()
    const raw = (body: number[]) => Uint8Array.from([body.length, ...body])
    const head = [1, ...Buffer.from(d.slice(7), 'hex')]
    assert.deepEqual(decodeAll(raw([...head, 0])).map(norm), [{ type: 'hello', digest: d }])
    assert.deepEqual(decodeAll(raw([...head, 1, ...Buffer.from(id.slice(7), 'hex')])).map(norm), [
      { type: 'hello', digest: d, pieceListId: id }
    ])
    const proof = randomBytes(32)
    const both = encodeFrame({ type: 'hello', digest: d, pieceListId: id, proof })
    assert.deepEqual(
      [...both],
      [...raw([...head, 3, ...Buffer.from(id.slice(7), 'hex'), ...proof])],
      'flags 3, then the id, then the proof'
    )
    // The decoded proof is a copy: reusing the pushed buffer does not change it.
    const buf = Uint8Array.from(encodeFrame({ type: 'hello', digest: d, proof }))
    const decoder = new FrameDecoder()
    decoder.push(buf)
    const [msg] = [...decoder.frames()]
    buf.fill(0)
    assert.deepEqual(msg?.type === 'hello' && [...(msg.proof ?? [])], [...proof])
  })

  it('refuses to encode invalid messages', () => {
    const bad = (m: unknown) => assert.throws(() => encodeFrame(m as WireMessage), violation(/cannot encode/))
    bad({ type: 'hello', digest: 'sha256:xyz' })
    bad({ type: 'hello', digest: digest(), pieceListId: 'nope' })
    bad({ type: 'hello', digest: digest(), proof: new Uint8Array(31) })
    bad({ type: 'hello', digest: digest(), proof: new Uint8Array(33) })
    bad({ type: 'have', index: 1, sha256: 'ab' })
    bad({ type: 'request', index: -1 })
    bad({ type: 'request', index: 2 ** 18 })
    bad({ type: 'cancel', index: 1.5 })
    bad({ type: 'piece', index: 1, data: new Uint8Array(0) })
    bad({ type: 'busy', retryAfterMs: -1 })
    bad({ type: 'reject', index: 1, code: 'lower' })
    bad({ type: 'partial', size: -1, pieceSize: 1 })
    bad({ type: 'partial', size: 1, pieceSize: 0 })
    bad({ type: 'nonsense' })
  })

  it('survives garbage without throwing anything but PROTOCOL_VIOLATION (property)', () => {
    for (let iter = 0; iter < 300; iter++) {
      const d = new FrameDecoder()
      try {
        for (const c of randomSplit(randomBytes(1 + Math.floor(Math.random() * 3000)))) {
          d.push(c)
          for (const _ of d.frames());
        }
        d.end()
      } catch (err) {
        assert.equal((err as { code?: string }).code, 'PROTOCOL_VIOLATION', String(err))
      }
    }
  })

  it('round-trips random message sequences split at random points (property)', () => {
    for (let iter = 0; iter < 300; iter++) {
      const msgs = Array.from({ length: 1 + Math.floor(Math.random() * 10) }, randomMessage)
      const all = Buffer.concat(msgs.map(encodeFrame))
      assert.deepEqual(decodeAll(...randomSplit(all)).map(norm), msgs.map(norm))
      // encodeFrameParts concatenates to the same frame.
      for (const m of msgs) assert.deepEqual(Buffer.concat(encodeFrameParts(m)), Buffer.from(encodeFrame(m)))
    }
  })
})
