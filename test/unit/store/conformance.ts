import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { afterEach, beforeEach, describe, it } from 'node:test'
import { MAX_ACCESS_KEYS } from '../../../src/content/access.ts'
import { digestOf, sha256Hex } from '../../../src/content/digest.ts'
import { pieceCount, pieceRange } from '../../../src/content/pieces.ts'
import type { Clock } from '../../../src/interface/clock.ts'
import type { BlobStore, PieceSource } from '../../../src/interface/store.ts'

/** The smallest piece size a blob may declare; keeps test blobs small. */
export const PIECE = 64 * 1024

/** A clock the tests move by hand, so LRU order never depends on timing. */
export class ManualClock implements Clock {
  #now = 1_000_000
  now(): number {
    return this.#now
  }
  /** Moves time forward by `ms` (1 by default). */
  tick(ms = 1): number {
    this.#now += ms
    return this.#now
  }
}

/** A test blob: deterministic bytes, their digest and per-piece hashes. */
export interface TestBlob {
  bytes: Buffer
  digest: string
  size: number
  pieces: { index: number; data: Buffer; sha256: string }[]
}

/** Deterministic pseudo-random bytes for `seed`, cut into pieces of `pieceSize`. */
export function testBlob(size: number, seed: string, pieceSize = PIECE): TestBlob {
  const parts: Buffer[] = []
  let have = 0
  for (let i = 0; have < size; i++) {
    const block = createHash('sha512').update(`${seed}:${i}`).digest()
    parts.push(block)
    have += block.length
  }
  const bytes = Buffer.concat(parts).subarray(0, size)
  const pieces = []
  for (let index = 0; index < pieceCount(size, pieceSize); index++) {
    const r = pieceRange(index, size, pieceSize)
    const data = bytes.subarray(r.start, r.end)
    pieces.push({ index, data, sha256: sha256Hex(data) })
  }
  return { bytes, digest: digestOf(bytes), size, pieces }
}

/** Concatenates an async iterable of chunks. */
export async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = []
  for await (const c of it) parts.push(c)
  return Buffer.concat(parts)
}

/** Begins `blob` and puts the pieces listed (all by default). */
export async function putBlob(
  store: BlobStore,
  blob: TestBlob,
  opts: { indexes?: number[]; complete?: boolean; source?: PieceSource } = {}
): Promise<void> {
  await store.begin(blob.digest, { size: blob.size, pieceSize: PIECE })
  const indexes = opts.indexes ?? blob.pieces.map((p) => p.index)
  for (const i of indexes) {
    const p = blob.pieces[i]!
    await store.putPiece(blob.digest, i, p.data, { sha256: p.sha256, source: opts.source ?? 'registry' })
  }
  if (opts.complete ?? opts.indexes === undefined) await store.complete(blob.digest)
}

/** Asserts that `fn` rejects with a Shoal error carrying `code`. */
export async function rejectsWithCode(fn: () => Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(fn, (err: unknown) => {
    assert.equal((err as { code?: string }).code, code, `expected ${code}, got ${String(err)}`)
    return true
  })
}

/** What a conformance run needs from an implementation. */
export interface StoreHarness {
  store: BlobStore
  cleanup(): Promise<void>
}

/**
 * The `BlobStore` contract, run against every implementation. `make` builds a started store
 * with the given quota that reads time from `clock` (so eviction order is deterministic).
 */
export function storeConformance(
  name: string,
  make: (quotaBytes: number, clock: Clock) => Promise<StoreHarness>
): void {
  describe(`${name}: BlobStore conformance`, () => {
    let clock: ManualClock
    let h: StoreHarness | undefined
    const open = async (quotaBytes = 64 * PIECE): Promise<BlobStore> => {
      h = await make(quotaBytes, clock)
      return h.store
    }

    beforeEach(() => {
      clock = new ManualClock()
      h = undefined
    })
    afterEach(async () => {
      await h?.cleanup()
    })

    it('round-trips a blob: begin, pieces out of order, read, complete, stream', async () => {
      const store = await open()
      const blob = testBlob(3 * PIECE + 100, 'round-trip')
      const info = await store.begin(blob.digest, {
        size: blob.size,
        pieceSize: PIECE,
        mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip'
      })
      assert.equal(info.pieceCount, 4)
      assert.equal(info.piecesHeld, 0)
      assert.equal(info.complete, false)
      assert.equal(info.pinned, false)
      assert.equal(info.lastUsed, clock.now())
      // pieces of one blob may be written concurrently
      await Promise.all(
        [...blob.pieces].reverse().map((p) =>
          store.putPiece(blob.digest, p.index, p.data, {
            sha256: p.sha256,
            source: p.index % 2 === 0 ? 'registry' : 'peer'
          })
        )
      )
      const pieces = await store.pieces(blob.digest)
      assert.deepEqual(
        pieces,
        blob.pieces.map((p) => ({
          index: p.index,
          sha256: p.sha256,
          source: p.index % 2 === 0 ? 'registry' : 'peer'
        }))
      )
      // a range across a piece boundary, before the blob is complete
      const across = await store.read(blob.digest, { start: PIECE - 10, end: 2 * PIECE + 10 })
      assert.deepEqual(Buffer.from(across), blob.bytes.subarray(PIECE - 10, 2 * PIECE + 10))
      clock.tick(5)
      const done = await store.complete(blob.digest)
      assert.equal(done.complete, true)
      assert.equal(done.piecesHeld, 4)
      assert.equal(done.lastUsed, clock.now())
      assert.equal(done.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip')
      assert.deepEqual(await collect(store.stream(blob.digest)), blob.bytes)
      assert.deepEqual(
        await collect(store.stream(blob.digest, { start: 7, end: 2 * PIECE + 3 })),
        blob.bytes.subarray(7, 2 * PIECE + 3)
      )
      assert.deepEqual(await store.stat(blob.digest), done)
      assert.deepEqual(await store.list(), [done])
      // complete is idempotent
      assert.equal((await store.complete(blob.digest)).complete, true)
    })

    it('stat of a blob never begun is undefined', async () => {
      const store = await open()
      assert.equal(await store.stat(testBlob(10, 'never').digest), undefined)
      assert.deepEqual(await store.pieces(testBlob(10, 'never').digest), [])
    })

    it('rejects a piece with a malformed sha256, and does not record it', async () => {
      // The store checks the form of the hash; the caller hashed the bytes (see `BlobStore`).
      const store = await open()
      const blob = testBlob(2 * PIECE, 'bad-hash')
      await store.begin(blob.digest, { size: blob.size, pieceSize: PIECE })
      const p0 = blob.pieces[0]!
      for (const sha256 of ['', 'xyz', p0.sha256.toUpperCase(), `${p0.sha256}00`]) {
        await assert.rejects(
          () => store.putPiece(blob.digest, 0, p0.data, { sha256, source: 'peer' }),
          (err: unknown) =>
            ['INVALID_DIGEST', 'DIGEST_MISMATCH'].includes((err as { code?: string }).code ?? '')
        )
      }
      assert.deepEqual(await store.pieces(blob.digest), [])
      assert.equal((await store.stat(blob.digest))?.piecesHeld, 0)
      await rejectsWithCode(() => store.read(blob.digest, { start: 0, end: 10 }), 'BLOB_UNKNOWN')
    })

    it('rejects a piece of the wrong length, including a short last piece', async () => {
      const store = await open()
      const blob = testBlob(PIECE + 500, 'bad-length')
      await store.begin(blob.digest, { size: blob.size, pieceSize: PIECE })
      const short = blob.pieces[0]!.data.subarray(0, PIECE - 1)
      await rejectsWithCode(
        () => store.putPiece(blob.digest, 0, short, { sha256: sha256Hex(short), source: 'peer' }),
        'SIZE_MISMATCH'
      )
      const long = blob.bytes.subarray(PIECE - 1)
      await rejectsWithCode(
        () => store.putPiece(blob.digest, 1, long, { sha256: sha256Hex(long), source: 'peer' }),
        'SIZE_MISMATCH'
      )
      await rejectsWithCode(
        () => store.putPiece(blob.digest, 2, short, { sha256: sha256Hex(short), source: 'peer' }),
        'RANGE_NOT_SATISFIABLE'
      )
      assert.deepEqual(await store.pieces(blob.digest), [])
    })

    it('putPiece on an unknown blob throws BLOB_UNKNOWN', async () => {
      const store = await open()
      const blob = testBlob(PIECE, 'unknown')
      const p = blob.pieces[0]!
      await rejectsWithCode(
        () => store.putPiece(blob.digest, 0, p.data, { sha256: p.sha256, source: 'peer' }),
        'BLOB_UNKNOWN'
      )
    })

    it('putPiece is idempotent', async () => {
      const store = await open()
      const blob = testBlob(2 * PIECE, 'idem-piece')
      await store.begin(blob.digest, { size: blob.size, pieceSize: PIECE })
      const p = blob.pieces[1]!
      await store.putPiece(blob.digest, 1, p.data, { sha256: p.sha256, source: 'registry' })
      await store.putPiece(blob.digest, 1, p.data, { sha256: p.sha256, source: 'peer' })
      assert.equal((await store.pieces(blob.digest)).length, 1)
      assert.equal((await store.stat(blob.digest))?.piecesHeld, 1)
    })

    it('begin is idempotent for the same geometry; a conflicting size throws SIZE_MISMATCH', async () => {
      const store = await open()
      const blob = testBlob(2 * PIECE, 'idem-begin')
      await putBlob(store, blob, { indexes: [0] })
      const again = await store.begin(blob.digest, { size: blob.size, pieceSize: PIECE })
      assert.equal(again.piecesHeld, 1)
      assert.equal(store.usage().usedBytes, blob.size)
      await rejectsWithCode(
        () => store.begin(blob.digest, { size: blob.size + 1, pieceSize: PIECE }),
        'SIZE_MISMATCH'
      )
      await rejectsWithCode(
        () => store.begin(blob.digest, { size: blob.size, pieceSize: 2 * PIECE }),
        'SIZE_MISMATCH'
      )
      assert.equal(store.usage().blobs, 1)
    })

    it('begin validates the digest and the geometry', async () => {
      const store = await open()
      await rejectsWithCode(() => store.begin('sha256:abc', { size: 1, pieceSize: PIECE }), 'INVALID_DIGEST')
      await rejectsWithCode(
        () => store.begin(`sha512:${'a'.repeat(128)}`, { size: 1, pieceSize: PIECE }),
        'INVALID_DIGEST'
      )
      const d = testBlob(10, 'geometry').digest
      await rejectsWithCode(() => store.begin(d, { size: -1, pieceSize: PIECE }), 'INVALID_PIECE_LIST')
      await rejectsWithCode(() => store.begin(d, { size: 10, pieceSize: 1000 }), 'INVALID_PIECE_LIST')
      assert.equal(store.usage().blobs, 0)
    })

    it('reads only bytes inside held pieces; ranges outside the blob are not satisfiable', async () => {
      const store = await open()
      const blob = testBlob(3 * PIECE, 'partial-read')
      await putBlob(store, blob, { indexes: [1] })
      assert.deepEqual(
        Buffer.from(await store.read(blob.digest, { start: PIECE + 3, end: 2 * PIECE })),
        blob.bytes.subarray(PIECE + 3, 2 * PIECE)
      )
      await rejectsWithCode(() => store.read(blob.digest, { start: 0, end: 10 }), 'BLOB_UNKNOWN')
      await rejectsWithCode(
        () => store.read(blob.digest, { start: 2 * PIECE - 1, end: 2 * PIECE + 1 }),
        'BLOB_UNKNOWN'
      )
      await rejectsWithCode(
        () => store.read(blob.digest, { start: 0, end: blob.size + 1 }),
        'RANGE_NOT_SATISFIABLE'
      )
      await rejectsWithCode(() => store.read(blob.digest, { start: 5, end: 4 }), 'RANGE_NOT_SATISFIABLE')
      await rejectsWithCode(
        () => store.read(testBlob(5, 'nope').digest, { start: 0, end: 1 }),
        'BLOB_UNKNOWN'
      )
      // a partial blob cannot be streamed
      await rejectsWithCode(() => collect(store.stream(blob.digest)), 'BLOB_UNKNOWN')
    })

    it('refuses to complete a blob with missing pieces', async () => {
      const store = await open()
      const blob = testBlob(2 * PIECE, 'incomplete')
      await putBlob(store, blob, { indexes: [0] })
      await assert.rejects(
        () => store.complete(blob.digest),
        (err: unknown) => typeof (err as { code?: unknown }).code === 'string'
      )
      assert.equal((await store.stat(blob.digest))?.complete, false)
      await rejectsWithCode(() => store.complete(testBlob(3, 'nope').digest), 'BLOB_UNKNOWN')
    })

    it('evicts least recently used complete blobs first, in touch order', async () => {
      const store = await open(3 * PIECE)
      const [a, b, c, d, e] = ['a', 'b', 'c', 'd', 'e'].map((s) => testBlob(PIECE, `lru-${s}`)) as [
        TestBlob,
        TestBlob,
        TestBlob,
        TestBlob,
        TestBlob
      ]
      for (const blob of [a, b, c]) {
        clock.tick()
        await putBlob(store, blob)
      }
      clock.tick()
      await store.touch(a.digest)
      assert.equal((await store.stat(a.digest))?.lastUsed, clock.now())
      clock.tick()
      await putBlob(store, d)
      assert.equal(await store.stat(b.digest), undefined, 'b was least recently used')
      await rejectsWithCode(() => store.read(b.digest, { start: 0, end: 1 }), 'BLOB_UNKNOWN')
      clock.tick()
      await putBlob(store, e)
      assert.equal(await store.stat(c.digest), undefined, 'c went next')
      assert.deepEqual(
        (await store.list()).map((x) => x.digest).sort(),
        [a, d, e].map((x) => x.digest).sort()
      )
      assert.deepEqual(await collect(store.stream(a.digest)), a.bytes)
      assert.equal(store.usage().usedBytes, 3 * PIECE)
    })

    it('evicts as many blobs as it takes to fit a large one', async () => {
      const store = await open(4 * PIECE)
      const small = ['1', '2', '3'].map((s) => testBlob(PIECE, `many-${s}`))
      for (const blob of small) {
        clock.tick()
        await putBlob(store, blob)
      }
      const big = testBlob(3 * PIECE, 'many-big')
      await putBlob(store, big)
      assert.deepEqual(
        (await store.list()).map((x) => x.digest).sort(),
        [small[2]!.digest, big.digest].sort()
      )
    })

    it('never evicts pinned or leased blobs', async () => {
      const store = await open(3 * PIECE)
      const [pinned, leased, free] = ['p', 'l', 'f'].map((s) => testBlob(PIECE, `keep-${s}`)) as [
        TestBlob,
        TestBlob,
        TestBlob
      ]
      for (const blob of [pinned, leased, free]) {
        clock.tick()
        await putBlob(store, blob)
      }
      await store.setPinned(pinned.digest, true)
      assert.equal((await store.stat(pinned.digest))?.pinned, true)
      const lease = store.acquire(leased.digest)
      const lease2 = store.acquire(leased.digest)
      clock.tick()
      const new1 = testBlob(PIECE, 'keep-new1')
      await putBlob(store, new1)
      await store.setPinned(new1.digest, true)
      assert.equal(await store.stat(free.digest), undefined)
      assert.ok(await store.stat(pinned.digest))
      assert.ok(await store.stat(leased.digest))
      // leases nest: one release is not enough
      lease.release()
      lease.release()
      await rejectsWithCode(() => putBlob(store, testBlob(PIECE, 'keep-new2')), 'STORE_FULL')
      lease2.release()
      clock.tick()
      await putBlob(store, testBlob(PIECE, 'keep-new2'))
      assert.equal(await store.stat(leased.digest), undefined)
      // unpinning makes a blob evictable again
      await store.setPinned(pinned.digest, false)
      clock.tick()
      await putBlob(store, testBlob(PIECE, 'keep-new3'))
      assert.equal(await store.stat(pinned.digest), undefined)
    })

    it('keeps a blob pinned while any name holds it', async () => {
      const store = await open(2 * PIECE)
      const shared = testBlob(PIECE, 'pin-shared')
      await putBlob(store, shared)
      await store.setPinned(shared.digest, true, { name: 'reg/app:v1' })
      await store.setPinned(shared.digest, true, { name: 'reg/app:v2' })
      await store.setPinned(shared.digest, true, { name: 'reg/app:v2' })
      assert.deepEqual((await store.stat(shared.digest))?.pins, ['reg/app:v1', 'reg/app:v2'])
      await store.setPinned(shared.digest, false, { name: 'reg/app:v1' })
      assert.equal((await store.stat(shared.digest))?.pinned, true, 'v2 still holds it')
      // Still pinned: a blob that needs all the room cannot have it.
      await rejectsWithCode(() => putBlob(store, testBlob(2 * PIECE, 'pin-big')), 'STORE_FULL')
      await store.setPinned(shared.digest, false, { name: 'reg/app:v2' })
      const info = await store.stat(shared.digest)
      assert.equal(info?.pinned, false)
      assert.equal(info?.pins, undefined)
      // Unpinning without a name drops every name.
      await store.setPinned(shared.digest, true)
      await store.setPinned(shared.digest, true, { name: 'other' })
      await store.setPinned(shared.digest, false)
      assert.equal((await store.stat(shared.digest))?.pinned, false)
    })

    it('evicts down to a target, least recently used first, sparing pinned, leased and partial blobs', async () => {
      const evicted: string[] = []
      const store = await open(16 * PIECE)
      const [a, b, c, d, p, l] = ['a', 'b', 'c', 'd', 'p', 'l'].map((s) => testBlob(PIECE, `gc-${s}`))
      for (const blob of [p, l, a, b, c, d] as TestBlob[]) {
        clock.tick()
        await putBlob(store, blob)
      }
      const partial = testBlob(2 * PIECE, 'gc-partial')
      await putBlob(store, partial, { indexes: [0] })
      await store.setPinned(p!.digest, true)
      const lease = store.acquire(l!.digest)
      clock.tick()
      await store.touch(a!.digest)
      // 8 pieces used (6 blobs and the partial's 2): down to 6 frees the two least recently used.
      const first = await store.evict({ targetBytes: 6 * PIECE })
      evicted.push(...first.evicted.map((e) => e.digest))
      assert.deepEqual(evicted, [b!.digest, c!.digest])
      assert.equal(first.freedBytes, 2 * PIECE)
      assert.equal(first.usage.usedBytes, 6 * PIECE)
      assert.equal(await store.stat(b!.digest), undefined)
      // No target: everything evictable goes; pinned, leased and partial blobs stay.
      const all = await store.evict()
      assert.deepEqual(
        all.evicted.map((e) => e.digest),
        [d!.digest, a!.digest]
      )
      assert.deepEqual(
        (await store.list()).map((x) => x.digest).sort(),
        [p!.digest, l!.digest, partial.digest].sort()
      )
      // Nothing left to evict: an unreachable target evicts nothing more and does not throw.
      assert.deepEqual((await store.evict({ targetBytes: 0 })).evicted, [])
      lease.release()
    })

    it('takes a lower quota at the next begin', async () => {
      const store = await open(4 * PIECE)
      const [a, b, c] = ['a', 'b', 'c'].map((s) => testBlob(PIECE, `quota-${s}`)) as TestBlob[]
      for (const blob of [a, b, c] as TestBlob[]) {
        clock.tick()
        await putBlob(store, blob)
      }
      store.setQuota(2 * PIECE)
      assert.equal(store.usage().quotaBytes, 2 * PIECE)
      clock.tick()
      await putBlob(store, testBlob(PIECE, 'quota-d'))
      assert.equal(store.usage().usedBytes, 2 * PIECE)
      assert.equal(await store.stat(a!.digest), undefined)
      assert.equal(await store.stat(b!.digest), undefined)
      assert.ok(await store.stat(c!.digest))
    })

    it('throws STORE_FULL when nothing evictable makes room, and evicts nothing', async () => {
      const store = await open(2 * PIECE)
      const a = testBlob(PIECE, 'full-a')
      const b = testBlob(PIECE, 'full-b')
      await putBlob(store, a)
      await putBlob(store, b)
      await store.setPinned(b.digest, true)
      const big = testBlob(2 * PIECE, 'full-big')
      await assert.rejects(
        () => store.begin(big.digest, { size: big.size, pieceSize: PIECE }),
        (err: unknown) => {
          const e = err as Error & { code: string }
          assert.equal(e.code, 'STORE_FULL')
          assert.equal(e.name, 'StoreFullError')
          assert.match(e.message, new RegExp(String(2 * PIECE)))
          return true
        }
      )
      assert.ok(await store.stat(a.digest), 'a was not evicted for nothing')
      assert.equal(await store.stat(big.digest), undefined)
      // larger than the whole quota
      const huge = testBlob(3 * PIECE, 'full-huge')
      await rejectsWithCode(
        () => store.begin(huge.digest, { size: huge.size, pieceSize: PIECE }),
        'STORE_FULL'
      )
      assert.equal(store.usage().blobs, 2)
    })

    it('never evicts partial blobs', async () => {
      const store = await open(2 * PIECE)
      const partial = testBlob(PIECE, 'partial-p')
      await putBlob(store, partial, { indexes: [] })
      const done = testBlob(PIECE, 'partial-d')
      clock.tick()
      await putBlob(store, done)
      clock.tick()
      const next = testBlob(PIECE, 'partial-n')
      await putBlob(store, next)
      assert.ok(await store.stat(partial.digest))
      assert.equal(await store.stat(done.digest), undefined)
      await rejectsWithCode(() => putBlob(store, testBlob(2 * PIECE, 'partial-big')), 'STORE_FULL')
    })

    it('concurrent begins never overshoot the quota', async () => {
      const store = await open(4 * PIECE)
      const old = ['1', '2', '3', '4'].map((s) => testBlob(PIECE, `race-old-${s}`))
      for (const blob of old) {
        clock.tick()
        await putBlob(store, blob)
      }
      const fresh = ['1', '2'].map((s) => testBlob(2 * PIECE, `race-new-${s}`))
      await Promise.all(fresh.map((b) => store.begin(b.digest, { size: b.size, pieceSize: PIECE })))
      const u = store.usage()
      assert.ok(u.usedBytes <= u.quotaBytes, `${u.usedBytes} > ${u.quotaBytes}`)
      assert.deepEqual((await store.list()).map((x) => x.digest).sort(), fresh.map((x) => x.digest).sort())
    })

    it('deletes a blob and its bytes; it can then be begun afresh', async () => {
      const store = await open()
      const blob = testBlob(2 * PIECE, 'delete')
      await putBlob(store, blob)
      await store.delete(blob.digest)
      assert.equal(await store.stat(blob.digest), undefined)
      assert.deepEqual(await store.pieces(blob.digest), [])
      await rejectsWithCode(() => store.read(blob.digest, { start: 0, end: 1 }), 'BLOB_UNKNOWN')
      await rejectsWithCode(() => collect(store.stream(blob.digest)), 'BLOB_UNKNOWN')
      assert.equal(store.usage().usedBytes, 0)
      // deleting again (or something never stored) is harmless
      await store.delete(blob.digest)
      const info = await store.begin(blob.digest, { size: blob.size, pieceSize: PIECE })
      assert.equal(info.piecesHeld, 0)
      assert.equal(info.complete, false)
      await putBlob(store, blob)
      assert.deepEqual(await collect(store.stream(blob.digest)), blob.bytes)
    })

    it('handles an empty blob: no pieces, completes, streams nothing', async () => {
      const store = await open()
      const blob = testBlob(0, 'empty')
      const info = await store.begin(blob.digest, { size: 0, pieceSize: PIECE })
      assert.equal(info.pieceCount, 0)
      const done = await store.complete(blob.digest)
      assert.equal(done.complete, true)
      assert.equal(done.size, 0)
      assert.deepEqual(await collect(store.stream(blob.digest)), Buffer.alloc(0))
      assert.equal((await store.read(blob.digest, { start: 0, end: 0 })).byteLength, 0)
      assert.deepEqual(await store.pieces(blob.digest), [])
      assert.equal(store.usage().completeBlobs, 1)
    })

    it('counts usage: reserved bytes of complete and partial blobs', async () => {
      const store = await open(10 * PIECE)
      assert.deepEqual(store.usage(), { usedBytes: 0, quotaBytes: 10 * PIECE, blobs: 0, completeBlobs: 0 })
      const a = testBlob(2 * PIECE + 1, 'usage-a')
      const b = testBlob(3 * PIECE, 'usage-b')
      await putBlob(store, a)
      await putBlob(store, b, { indexes: [0] })
      assert.deepEqual(store.usage(), {
        usedBytes: a.size + b.size,
        quotaBytes: 10 * PIECE,
        blobs: 2,
        completeBlobs: 1
      })
      await store.delete(a.digest)
      assert.deepEqual(store.usage(), {
        usedBytes: b.size,
        quotaBytes: 10 * PIECE,
        blobs: 1,
        completeBlobs: 0
      })
    })

    it('touch of an unknown blob is harmless; setPinned of one throws BLOB_UNKNOWN', async () => {
      const store = await open()
      const d = testBlob(1, 'touch').digest
      await store.touch(d)
      await rejectsWithCode(() => store.setPinned(d, true), 'BLOB_UNKNOWN')
    })

    it('records access: public by default, private for good, keys deduplicated and bounded', async () => {
      const store = await open()
      const blob = testBlob(PIECE, 'access')
      const key = (n: number) => Uint8Array.from({ length: 32 }, () => n)
      assert.equal(await store.access(blob.digest), undefined)
      await rejectsWithCode(() => store.grantAccess(blob.digest, { private: true }), 'BLOB_UNKNOWN')
      await putBlob(store, blob)
      assert.deepEqual(await store.access(blob.digest), { private: false, keys: [] })
      await store.grantAccess(blob.digest, { key: key(1) })
      assert.deepEqual(await store.access(blob.digest), { private: false, keys: [key(1)] })
      await store.grantAccess(blob.digest, { private: true, key: key(2) })
      await store.grantAccess(blob.digest, { key: key(1) })
      // Seen again, a key moves to the newest place; a public grant never makes it public again.
      assert.deepEqual(await store.access(blob.digest), { private: true, keys: [key(2), key(1)] })
      await store.grantAccess(blob.digest, { private: false })
      assert.equal((await store.access(blob.digest))?.private, true)
      for (let n = 3; n < 3 + MAX_ACCESS_KEYS; n++) await store.grantAccess(blob.digest, { key: key(n) })
      const keys = (await store.access(blob.digest))?.keys ?? []
      assert.equal(keys.length, MAX_ACCESS_KEYS)
      assert.deepEqual(keys[0], key(3), 'the oldest keys went first')
      assert.deepEqual(keys.at(-1), key(2 + MAX_ACCESS_KEYS))
      await assert.rejects(() => store.grantAccess(blob.digest, { key: new Uint8Array(5) }), {
        code: 'INTERNAL'
      })
      // A blob begun private is private before its first piece; deleted, its access goes too.
      const other = testBlob(PIECE, 'access-private')
      await store.begin(other.digest, { size: other.size, pieceSize: PIECE, private: true })
      assert.deepEqual(await store.access(other.digest), { private: true, keys: [] })
      await store.delete(other.digest)
      assert.equal(await store.access(other.digest), undefined)
      await store.begin(other.digest, { size: other.size, pieceSize: PIECE })
      assert.deepEqual(await store.access(other.digest), { private: false, keys: [] })
    })

    it('throws STORE_CLOSED after stop (and stop is idempotent)', async () => {
      const store = await open()
      const blob = testBlob(PIECE, 'closed')
      await putBlob(store, blob)
      await store.stop()
      await store.stop()
      const p = blob.pieces[0]!
      const calls: [string, () => Promise<unknown>][] = [
        ['stat', () => store.stat(blob.digest)],
        ['begin', () => store.begin(blob.digest, { size: blob.size, pieceSize: PIECE })],
        ['pieces', () => store.pieces(blob.digest)],
        ['putPiece', () => store.putPiece(blob.digest, 0, p.data, { sha256: p.sha256, source: 'peer' })],
        ['read', () => store.read(blob.digest, { start: 0, end: 1 })],
        ['stream', () => collect(store.stream(blob.digest))],
        ['complete', () => store.complete(blob.digest)],
        ['delete', () => store.delete(blob.digest)],
        ['setPinned', () => store.setPinned(blob.digest, true)],
        ['touch', () => store.touch(blob.digest)],
        ['access', () => store.access(blob.digest)],
        ['grantAccess', () => store.grantAccess(blob.digest, { private: true })],
        ['list', () => store.list()],
        ['usage', async () => store.usage()]
      ]
      for (const [what, call] of calls) {
        await assert.rejects(call, (err: unknown) => {
          assert.equal((err as { code?: string }).code, 'STORE_CLOSED', what)
          return true
        })
      }
    })
  })
}
