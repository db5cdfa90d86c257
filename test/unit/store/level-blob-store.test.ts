import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { chmod, mkdir, mkdtemp, open, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, afterEach, before, beforeEach, describe, it } from 'node:test'
import { pino } from 'pino'
import { MiB } from '../../../src/constants.ts'
import { digestHex } from '../../../src/content/digest.ts'
import type { Clock } from '../../../src/interface/clock.ts'
import { LevelBlobStore } from '../../../src/store/level-blob-store.ts'
import {
  collect,
  ManualClock,
  PIECE,
  putBlob,
  rejectsWithCode,
  storeConformance,
  type TestBlob,
  testBlob
} from './conformance.ts'

const logger = pino({ level: 'silent' })

storeConformance('LevelBlobStore', async (quotaBytes, clock) => {
  const root = await mkdtemp(join(tmpdir(), 'shoal-store-'))
  const store = new LevelBlobStore({ clock, logger }, { root, quotaBytes })
  await store.start()
  return {
    store,
    cleanup: async () => {
      await store.stop()
      await rm(root, { recursive: true, force: true })
    }
  }
})

describe('LevelBlobStore on disk', () => {
  let root: string
  let clock: ManualClock
  const opened: LevelBlobStore[] = []

  const openStore = async (quotaBytes = 64 * PIECE, at: Clock = clock): Promise<LevelBlobStore> => {
    const store = new LevelBlobStore({ clock: at, logger }, { root, quotaBytes })
    await store.start()
    opened.push(store)
    return store
  }
  const dataFile = (blob: TestBlob) => join(root, 'blobs', 'sha256', digestHex(blob.digest))
  const writeAt = async (path: string, data: Uint8Array, position: number) => {
    const fh = await open(path, 'r+')
    try {
      await fh.write(data, 0, data.byteLength, position)
    } finally {
      await fh.close()
    }
  }

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'shoal-store-'))
    clock = new ManualClock()
  })
  afterEach(async () => {
    for (const s of opened.splice(0)) await s.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('throws STORE_CLOSED before start', async () => {
    const store = new LevelBlobStore({ clock, logger }, { root, quotaBytes: PIECE })
    await rejectsWithCode(() => store.list(), 'STORE_CLOSED')
    assert.throws(() => store.usage(), { code: 'STORE_CLOSED' })
  })

  it("keeps its directory root's only, even one that existed open to all (private layers)", async () => {
    await chmod(root, 0o755)
    await openStore()
    assert.equal((await stat(root)).mode & 0o777, 0o700)
  })

  it('lays out one sparse data file of the blob size per blob', async () => {
    const store = await openStore()
    const blob = testBlob(3 * PIECE + 7, 'layout')
    await store.begin(blob.digest, { size: blob.size, pieceSize: PIECE })
    assert.equal((await stat(dataFile(blob))).size, blob.size)
    await store.delete(blob.digest)
    await assert.rejects(() => stat(dataFile(blob)), { code: 'ENOENT' })
  })

  it('resumes a partial blob after a restart', async () => {
    const blob = testBlob(4 * PIECE + 1, 'resume')
    let store = await openStore()
    await putBlob(store, blob, { indexes: [0, 2, 4] })
    await store.stop()
    store = await openStore()
    const info = await store.stat(blob.digest)
    assert.equal(info?.piecesHeld, 3)
    assert.equal(info?.complete, false)
    assert.deepEqual(
      (await store.pieces(blob.digest)).map((p) => p.index),
      [0, 2, 4]
    )
    assert.deepEqual(
      Buffer.from(await store.read(blob.digest, { start: 2 * PIECE, end: 3 * PIECE })),
      blob.bytes.subarray(2 * PIECE, 3 * PIECE)
    )
    // begin again (as a resuming fetch does) keeps what is held
    assert.equal((await store.begin(blob.digest, { size: blob.size, pieceSize: PIECE })).piecesHeld, 3)
    await putBlob(store, blob, { indexes: [1, 3], complete: true })
    assert.deepEqual(await collect(store.stream(blob.digest)), blob.bytes)
  })

  it('drops a held piece whose bytes were changed on disk while the store was down', async () => {
    const blob = testBlob(3 * PIECE, 'corrupt')
    let store = await openStore()
    await putBlob(store, blob, { indexes: [0, 1, 2] })
    await store.stop()
    await writeAt(dataFile(blob), Buffer.from('garbage'), PIECE + 100)
    store = await openStore()
    assert.deepEqual(
      (await store.pieces(blob.digest)).map((p) => p.index),
      [0, 2]
    )
    await rejectsWithCode(() => store.read(blob.digest, { start: PIECE, end: PIECE + 1 }), 'BLOB_UNKNOWN')
    await assert.rejects(() => store.complete(blob.digest))
    // it is fetched again and the blob completes with the right bytes
    await putBlob(store, blob, { indexes: [1], complete: true })
    assert.deepEqual(await collect(store.stream(blob.digest)), blob.bytes)
    // and the drop was persisted: a second restart agrees
    await store.stop()
    store = await openStore()
    assert.equal((await store.stat(blob.digest))?.complete, true)
  })

  it('drops a piece recorded with a hash its bytes do not have', async () => {
    // The caller vouches for the hash; a caller bug is caught at the next start.
    const blob = testBlob(2 * PIECE, 'wrong-record')
    let store = await openStore()
    await store.begin(blob.digest, { size: blob.size, pieceSize: PIECE })
    const p0 = blob.pieces[0]!
    const p1 = blob.pieces[1]!
    try {
      await store.putPiece(blob.digest, 0, p0.data, { sha256: p1.sha256, source: 'peer' })
    } catch {
      // a store that re-hashes refuses it outright, which is just as good
    }
    await store.stop()
    store = await openStore()
    assert.deepEqual(await store.pieces(blob.digest), [])
  })

  it('does not hold a piece whose bytes were written but not recorded (crash before the record)', async () => {
    const blob = testBlob(2 * PIECE, 'crash')
    let store = await openStore()
    await putBlob(store, blob, { indexes: [0] })
    await store.stop()
    // the bytes of piece 1 reached the file, then the process died before the record was put
    await writeAt(dataFile(blob), blob.pieces[1]!.data, PIECE)
    store = await openStore()
    assert.deepEqual(
      (await store.pieces(blob.digest)).map((p) => p.index),
      [0]
    )
    await rejectsWithCode(() => store.read(blob.digest, { start: PIECE, end: PIECE + 1 }), 'BLOB_UNKNOWN')
  })

  it('removes data files with no record, and records whose data file is missing or the wrong size', async () => {
    const kept = testBlob(PIECE, 'kept')
    const missing = testBlob(PIECE, 'missing')
    const truncated = testBlob(2 * PIECE, 'truncated')
    const orphan = testBlob(PIECE, 'orphan')
    let store = await openStore()
    await putBlob(store, kept)
    await putBlob(store, missing)
    await putBlob(store, truncated, { indexes: [0] })
    await store.stop()
    await rm(dataFile(missing))
    const fh = await open(dataFile(truncated), 'r+')
    await fh.truncate(PIECE)
    await fh.close()
    await writeFile(dataFile(orphan), orphan.bytes)
    await mkdir(join(root, 'blobs', 'sha256', 'stray-dir'))
    store = await openStore()
    assert.deepEqual(
      (await store.list()).map((b) => b.digest),
      [kept.digest]
    )
    assert.deepEqual(await readdir(join(root, 'blobs', 'sha256')), [digestHex(kept.digest)])
    assert.equal(store.usage().usedBytes, kept.size)
    // the dropped blobs can be stored again from scratch
    await putBlob(store, missing)
    assert.deepEqual(await collect(store.stream(missing.digest)), missing.bytes)
  })

  it('keeps access across restarts: the private flag and the keys, in order', async () => {
    const a = testBlob(PIECE + 3, 'access-a')
    const b = testBlob(PIECE, 'access-b')
    const key = (n: number) => Uint8Array.from({ length: 32 }, () => n)
    let store = await openStore()
    await putBlob(store, a)
    await store.grantAccess(a.digest, { private: true, key: key(7) })
    await store.grantAccess(a.digest, { key: key(9) })
    // A partial blob begun private, then a touch and a pin: each rewrite of the record keeps it.
    await store.begin(b.digest, { size: b.size, pieceSize: PIECE, private: true })
    await store.setPinned(b.digest, true)
    await store.touch(a.digest)
    await store.stop()
    store = await openStore()
    assert.deepEqual(await store.access(a.digest), { private: true, keys: [key(7), key(9)] })
    assert.deepEqual(await store.access(b.digest), { private: true, keys: [] })
    await putBlob(store, b)
    await store.stop()
    store = await openStore()
    assert.deepEqual(await store.access(b.digest), { private: true, keys: [] }, 'complete keeps it')
  })

  it('keeps complete blobs across restarts, with lastUsed, pinned and mediaType', async () => {
    const a = testBlob(PIECE + 3, 'survive-a')
    const b = testBlob(0, 'survive-b')
    let store = await openStore()
    await store.begin(a.digest, { size: a.size, pieceSize: PIECE, mediaType: 'application/x-test' })
    await putBlob(store, a)
    await putBlob(store, b)
    clock.tick(100)
    await store.touch(a.digest)
    await store.setPinned(b.digest, true)
    const before = await store.list()
    await store.stop()
    store = await openStore()
    assert.deepEqual(
      (await store.list()).sort((x, y) => x.digest.localeCompare(y.digest)),
      before.sort((x, y) => x.digest.localeCompare(y.digest))
    )
    const info = await store.stat(a.digest)
    assert.equal(info?.lastUsed, clock.now())
    assert.equal(info?.mediaType, 'application/x-test')
    assert.equal((await store.stat(b.digest))?.pinned, true)
    assert.deepEqual(await collect(store.stream(a.digest)), a.bytes)
    assert.deepEqual(store.usage(), { usedBytes: a.size, quotaBytes: 64 * PIECE, blobs: 2, completeBlobs: 2 })
  })

  it('keeps named pins across restarts; a record from before names reads as pinned by its digest', async () => {
    const a = testBlob(PIECE, 'pins-a')
    let store = await openStore()
    await putBlob(store, a)
    await store.setPinned(a.digest, true, { name: 'reg/app:v1' })
    await store.setPinned(a.digest, true, { name: 'sha256:feed' })
    await store.stop()
    store = await openStore()
    assert.deepEqual((await store.stat(a.digest))?.pins, ['reg/app:v1', 'sha256:feed'])
    await store.setPinned(a.digest, false, { name: 'reg/app:v1' })
    await store.stop()
    store = await openStore()
    assert.deepEqual((await store.stat(a.digest))?.pins, ['sha256:feed'])
    assert.equal((await store.evict()).evicted.length, 0, 'a pinned blob is not evicted')
  })

  it('evicts in the persisted LRU order after a restart', async () => {
    const [x, y, z] = ['x', 'y', 'z'].map((s) => testBlob(PIECE, `lru-restart-${s}`)) as [
      TestBlob,
      TestBlob,
      TestBlob
    ]
    let store = await openStore(2 * PIECE)
    clock.tick()
    await putBlob(store, x)
    clock.tick()
    await putBlob(store, y)
    clock.tick()
    await store.touch(x.digest)
    await store.stop()
    store = await openStore(2 * PIECE)
    clock.tick()
    await putBlob(store, z)
    assert.equal(await store.stat(y.digest), undefined)
    assert.ok(await store.stat(x.digest))
  })

  it('throws STORE_CLOSED for a piece put while the store stops', async () => {
    const blob = testBlob(PIECE, 'stop-race')
    const store = await openStore()
    await store.begin(blob.digest, { size: blob.size, pieceSize: PIECE })
    const p = blob.pieces[0]!
    const put = store.putPiece(blob.digest, 0, p.data, { sha256: p.sha256, source: 'peer' })
    const stopped = store.stop()
    await put.catch((err: unknown) => {
      assert.equal((err as { code?: string }).code, 'STORE_CLOSED')
    })
    await stopped
  })
})

describe('LevelBlobStore on a full file system', () => {
  let mnt: string | undefined

  before(async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-tmpfs-'))
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir], { stdio: 'ignore' })
      mnt = dir
    } catch {
      await rm(dir, { recursive: true, force: true })
    }
  })
  after(async () => {
    if (!mnt) return
    execFileSync('umount', [mnt], { stdio: 'ignore' })
    await rm(mnt, { recursive: true, force: true })
  })

  it('turns ENOSPC into DISK_FULL and does not record the piece', async () => {
    // The suite runs as root (see README); a tmpfs that cannot be mounted is a failure, not a skip.
    assert.ok(mnt, 'mounting a 1 MiB tmpfs failed: this test needs root')
    const clock = new ManualClock()
    const store = new LevelBlobStore({ clock, logger }, { root: mnt, quotaBytes: 64 * MiB })
    await store.start()
    try {
      // the file is sparse, so a blob far larger than the file system can be begun
      const blob = testBlob(40 * PIECE, 'enospc')
      await store.begin(blob.digest, { size: blob.size, pieceSize: PIECE })
      let failedAt = -1
      for (const p of blob.pieces) {
        try {
          await store.putPiece(blob.digest, p.index, p.data, { sha256: p.sha256, source: 'registry' })
        } catch (err) {
          assert.equal((err as { code?: string }).code, 'DISK_FULL', String(err))
          failedAt = p.index
          break
        }
      }
      assert.ok(failedAt > 0, 'the 1 MiB file system filled up')
      const held = (await store.pieces(blob.digest)).map((p) => p.index)
      assert.ok(!held.includes(failedAt))
      assert.equal(held.length, failedAt)
      // freeing the space lets the store carry on
      await store.delete(blob.digest)
      const small = testBlob(PIECE, 'enospc-small')
      await putBlob(store, small)
      assert.deepEqual(await collect(store.stream(small.digest)), small.bytes)
    } finally {
      await store.stop()
    }
  })
})
