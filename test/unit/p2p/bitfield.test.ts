import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Bitfield } from '../../../src/p2p/bitfield.ts'

function code(c: string) {
  return (err: unknown) => (err as { code?: string }).code === c
}

function randomField(n: number, p: number): Bitfield {
  const bf = new Bitfield(n)
  for (let i = 0; i < n; i++) if (Math.random() < p) bf.set(i)
  return bf
}

describe('Bitfield', () => {
  it('sets, unsets, counts and lists pieces', () => {
    const bf = new Bitfield(10)
    assert.equal(bf.count(), 0)
    assert.ok(bf.empty())
    assert.equal(bf.set(0), true)
    assert.equal(bf.set(0), false)
    bf.set(9)
    bf.set(3)
    assert.equal(bf.count(), 3)
    assert.ok(bf.has(3) && bf.has(9) && !bf.has(4))
    assert.ok(!bf.has(10) && !bf.has(-1) && !bf.has(1.5))
    assert.deepEqual(bf.present(), [0, 3, 9])
    assert.deepEqual(bf.missing(), [1, 2, 4, 5, 6, 7, 8])
    assert.deepEqual([...bf.toBytes()], [0b10010000, 0b01000000])
    assert.equal(bf.unset(3), true)
    assert.equal(bf.unset(3), false)
    assert.equal(bf.count(), 2)
    assert.throws(() => bf.set(10), code('RANGE_NOT_SATISFIABLE'))
    assert.throws(() => bf.unset(-1), code('RANGE_NOT_SATISFIABLE'))
  })

  it('knows when it is full', () => {
    const bf = new Bitfield(9)
    for (let i = 0; i < 9; i++) {
      assert.ok(!bf.full())
      bf.set(i)
    }
    assert.ok(bf.full())
    assert.deepEqual(bf.missing(), [])
    assert.ok(Bitfield.all(9).equals(bf))
    assert.deepEqual([...Bitfield.all(9).toBytes()], [0xff, 0x80])
    assert.ok(new Bitfield(0).full())
    assert.equal(new Bitfield(0).toBytes().length, 0)
  })

  it('reads the wire form and rejects wrong lengths and spare bits', () => {
    const bf = Bitfield.fromBytes(Uint8Array.of(0b10100000, 0b11000000), 10)
    assert.deepEqual(bf.present(), [0, 2, 8, 9])
    assert.equal(bf.count(), 4)
    assert.throws(() => Bitfield.fromBytes(Uint8Array.of(0, 0, 0), 10), code('PROTOCOL_VIOLATION'))
    assert.throws(() => Bitfield.fromBytes(Uint8Array.of(0), 10), /must be 2 bytes/)
    assert.throws(() => Bitfield.fromBytes(Uint8Array.of(0, 0b00100000), 10), /spare bits/)
    assert.equal(Bitfield.fromBytes(Uint8Array.of(0xff), 8).count(), 8)
  })

  it('copies on the way in and out', () => {
    const bytes = Uint8Array.of(0x80)
    const bf = Bitfield.fromBytes(bytes, 8)
    bytes[0] = 0xff
    assert.equal(bf.count(), 1)
    bf.toBytes()[0] = 0
    assert.ok(bf.has(0))
    const c = bf.clone()
    c.set(1)
    assert.ok(!bf.has(1))
  })

  it('combines fields: and, andNot, or', () => {
    const mine = Bitfield.fromBytes(Uint8Array.of(0b11001100, 0b10000000), 9)
    const theirs = Bitfield.fromBytes(Uint8Array.of(0b10101010, 0b10000000), 9)
    assert.deepEqual(theirs.andNot(mine).present(), [2, 6])
    assert.deepEqual(theirs.and(mine).present(), [0, 4, 8])
    assert.deepEqual(theirs.or(mine).present(), [0, 1, 2, 4, 5, 6, 8])
    assert.throws(() => mine.and(new Bitfield(8)), code('INTERNAL'))
  })

  it('matches a Set model on random operations (property)', () => {
    for (let iter = 0; iter < 300; iter++) {
      const n = Math.floor(Math.random() * 200)
      const a = randomField(n, Math.random())
      const b = randomField(n, Math.random())
      const sa = new Set(a.present())
      const sb = new Set(b.present())
      const all = Array.from({ length: n }, (_, i) => i)
      assert.equal(a.count(), sa.size)
      assert.deepEqual(
        a.missing(),
        all.filter((i) => !sa.has(i))
      )
      assert.deepEqual(
        a.and(b).present(),
        all.filter((i) => sa.has(i) && sb.has(i))
      )
      assert.deepEqual(
        a.andNot(b).present(),
        all.filter((i) => sa.has(i) && !sb.has(i))
      )
      assert.deepEqual(
        a.or(b).present(),
        all.filter((i) => sa.has(i) || sb.has(i))
      )
      const back = Bitfield.fromBytes(a.toBytes(), n)
      assert.ok(back.equals(a))
      assert.equal(back.count(), a.count())
      assert.equal(a.toBytes().length, Bitfield.byteLength(n))
      assert.equal(a.full(), sa.size === n)
    }
  })
})
