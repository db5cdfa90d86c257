import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import { KiB, MiB } from '../../../src/constants.ts'
import { digestOf } from '../../../src/content/digest.ts'
import {
  buildPieceList,
  decodePieceList,
  encodePieceList,
  MAX_PIECE_LIST_PIECES,
  type PieceList,
  pieceListId,
  verifyPiece
} from '../../../src/content/piece-list.ts'

const PS = 64 * KiB

function blob(size: number): { data: Uint8Array; digest: string } {
  const data = randomBytes(size)
  return { data, digest: digestOf(data) }
}

/** `b` after `change` edits it through a DataView. */
function edit(b: Uint8Array, change: (v: DataView) => void): Uint8Array {
  change(new DataView(b.buffer, b.byteOffset, b.byteLength))
  return b
}

function code(c: string) {
  return (err: unknown) => (err as { code?: string }).code === c
}

describe('piece list', () => {
  it('builds, encodes and decodes a list (last piece shorter)', () => {
    const { data, digest } = blob(3 * PS + 100)
    const pl = buildPieceList(digest, data, PS)
    assert.equal(pl.hashes.length, 4)
    assert.equal(pl.size, data.length)
    const bytes = encodePieceList(pl)
    assert.equal(bytes.length, 49 + 4 * 32)
    assert.deepEqual(decodePieceList(bytes), pl)
    assert.deepEqual(decodePieceList(bytes, { digest, size: data.length, id: pieceListId(pl) }), pl)
    for (let i = 0; i < 4; i++) verifyPiece(pl, i, data.subarray(i * PS, Math.min((i + 1) * PS, data.length)))
  })

  it('handles an empty blob (no pieces)', () => {
    const { data, digest } = blob(0)
    const pl = buildPieceList(digest, data, PS)
    assert.deepEqual(pl.hashes, [])
    assert.deepEqual(decodePieceList(encodePieceList(pl)), pl)
  })

  it('is canonical: the same list always gives the same bytes and id', () => {
    const { data, digest } = blob(5 * PS)
    const a = buildPieceList(digest, data, PS)
    const b: PieceList = JSON.parse(JSON.stringify(a))
    assert.deepEqual(encodePieceList(a), encodePieceList(b))
    assert.equal(pieceListId(a), pieceListId(b))
    assert.equal(pieceListId(a), digestOf(encodePieceList(a)))
    assert.deepEqual(encodePieceList(decodePieceList(encodePieceList(a))), encodePieceList(a))
    const other = buildPieceList(digest, data, 2 * PS)
    assert.notEqual(pieceListId(other), pieceListId(a))
  })

  it('rejects a list that does not match the expectation', () => {
    const { data, digest } = blob(2 * PS)
    const bytes = encodePieceList(buildPieceList(digest, data, PS))
    assert.throws(
      () => decodePieceList(bytes, { digest: digestOf(randomBytes(8)) }),
      code('INVALID_PIECE_LIST')
    )
    assert.throws(() => decodePieceList(bytes, { size: 2 * PS + 1 }), /declares/)
    assert.throws(() => decodePieceList(bytes, { id: digestOf(randomBytes(8)) }), /hashes to/)
  })

  it('rejects malformed encodings', () => {
    const { data, digest } = blob(2 * PS + 1)
    const good = encodePieceList(buildPieceList(digest, data, PS))
    const bad = (mutate: (b: Uint8Array) => Uint8Array, re: RegExp) =>
      assert.throws(
        () => decodePieceList(mutate(good.slice())),
        (err: unknown) => {
          assert.equal((err as { code?: string }).code, 'INVALID_PIECE_LIST')
          assert.match((err as Error).message, re)
          return true
        }
      )
    bad((b) => b.subarray(0, 10), /shorter than/)
    bad((b) => b.subarray(0, b.length - 1), /need/)
    bad((b) => Buffer.concat([b, new Uint8Array(32)]), /need/)
    bad((b) => b.with(0, 0x41), /magic/)
    bad((b) => b.with(4, 2), /version/)
    // piece size 1 (below the minimum)
    bad((b) => edit(b, (v) => v.setUint32(45, 1)), /piece size/)
    // blob size beyond the maximum
    bad((b) => edit(b, (v) => v.setBigUint64(37, 2n ** 60n)), /out of range/)
    // geometry says 2 pieces, hashes say 3
    bad((b) => edit(b, (v) => v.setBigUint64(37, BigInt(2 * PS))), /need/)
    assert.throws(() => decodePieceList(randomBytes(5000)), code('INVALID_PIECE_LIST'))
  })

  it('refuses to encode an inconsistent list', () => {
    const { data, digest } = blob(2 * PS)
    const pl = buildPieceList(digest, data, PS)
    assert.throws(() => encodePieceList({ ...pl, hashes: pl.hashes.slice(1) }), /geometry needs/)
    assert.throws(() => encodePieceList({ ...pl, hashes: [pl.hashes[0] as string, 'XYZ'] }), /hex/)
    assert.throws(() => encodePieceList({ ...pl, digest: 'sha256:nope' }), code('INVALID_PIECE_LIST'))
    assert.throws(() => encodePieceList({ ...pl, pieceSize: 100 }), code('INVALID_PIECE_LIST'))
  })

  it('bounds the piece count', () => {
    const digest = digestOf(new Uint8Array())
    // 1 TiB at 4 MiB pieces is exactly the limit; at 2 MiB it is twice over.
    const hashes = new Array(MAX_PIECE_LIST_PIECES).fill('00'.repeat(32))
    const pl = { digest, size: 1024 * 1024 * MiB, pieceSize: 4 * MiB, hashes }
    assert.equal(decodePieceList(encodePieceList(pl)).hashes.length, MAX_PIECE_LIST_PIECES)
    assert.throws(() => encodePieceList({ ...pl, pieceSize: 2 * MiB }), /over the limit/)
  })

  it('verifyPiece catches wrong bytes, wrong lengths and bad indexes', () => {
    const { data, digest } = blob(2 * PS + 10)
    const pl = buildPieceList(digest, data, PS)
    const p0 = data.slice(0, PS)
    verifyPiece(pl, 0, p0)
    p0[5] = (p0[5] as number) ^ 1
    assert.throws(() => verifyPiece(pl, 0, p0), code('DIGEST_MISMATCH'))
    assert.throws(() => verifyPiece(pl, 1, data.subarray(0, PS)), code('DIGEST_MISMATCH'))
    assert.throws(() => verifyPiece(pl, 2, data.subarray(2 * PS, 2 * PS + 9)), code('SIZE_MISMATCH'))
    assert.throws(() => verifyPiece(pl, 0, data.subarray(0, PS + 1)), code('SIZE_MISMATCH'))
    assert.throws(() => verifyPiece(pl, 3, new Uint8Array(1)), code('RANGE_NOT_SATISFIABLE'))
    assert.throws(() => verifyPiece(pl, -1, new Uint8Array(1)), code('RANGE_NOT_SATISFIABLE'))
  })

  it('a list whose hashes do not match the data fails verification', () => {
    const { data, digest } = blob(3 * PS)
    const forged = buildPieceList(digest, randomBytes(3 * PS), PS)
    const decoded = decodePieceList(encodePieceList(forged), { digest, size: data.length })
    for (let i = 0; i < 3; i++) {
      assert.throws(
        () => verifyPiece(decoded, i, data.subarray(i * PS, (i + 1) * PS)),
        code('DIGEST_MISMATCH')
      )
    }
  })

  it('round-trips random lists (property)', () => {
    for (let iter = 0; iter < 300; iter++) {
      const pieceSize = PS * (1 + Math.floor(Math.random() * 4))
      const size = Math.floor(Math.random() * 1000 * pieceSize)
      const count = Math.ceil(size / pieceSize)
      const pl: PieceList = {
        digest: digestOf(randomBytes(4)),
        size,
        pieceSize,
        hashes: Array.from({ length: count }, () => randomBytes(32).toString('hex'))
      }
      const bytes = encodePieceList(pl)
      assert.deepEqual(decodePieceList(bytes, { digest: pl.digest, size }), pl)
      assert.equal(pieceListId(decodePieceList(bytes)), pieceListId(pl))
      // Any single-byte change of the header or the length breaks decoding or changes the list.
      const flipped = bytes.slice()
      const at = Math.floor(Math.random() * bytes.length)
      flipped[at] = (flipped[at] as number) ^ (1 + Math.floor(Math.random() * 255))
      try {
        assert.notDeepEqual(decodePieceList(flipped), pl)
      } catch (err) {
        assert.equal((err as { code?: string }).code, 'INVALID_PIECE_LIST')
      }
    }
  })
})
