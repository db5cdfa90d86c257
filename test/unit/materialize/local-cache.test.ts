import assert from 'node:assert/strict'
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, afterEach, before, beforeEach, describe, it } from 'node:test'
import { gzipSync } from 'node:zlib'
import { pino } from 'pino'
import { digestOf } from '../../../src/content/digest.ts'
import { BlobUnknownError, InvalidDigestError, UnsafeLayerError } from '../../../src/errors.ts'
import { putVerifiedBlob } from '../../../src/fetch/put-blob.ts'
import type { ByteRange } from '../../../src/interface/common.ts'
import type { MaterializeProgress } from '../../../src/interface/materializer.ts'
import { LocalCacheMaterializer } from '../../../src/materialize/local-cache.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'
import { tarOf } from './tars.ts'

const logger = pino({ level: 'silent' })

/** A memory store that counts the blob streams opened: one per extraction. */
class CountingStore extends MemoryBlobStore {
  streamed: string[] = []
  override stream(digest: string, range?: ByteRange): AsyncIterable<Uint8Array> {
    this.streamed.push(digest)
    return super.stream(digest, range)
  }
}

async function layerOf(store: CountingStore, name: string, content: string): Promise<string> {
  const bytes = gzipSync(await tarOf([{ header: { name, type: 'file', mode: 0o644 }, data: content }]))
  const digest = digestOf(bytes)
  await putVerifiedBlob(store, digest, bytes, { source: 'registry' })
  return digest
}

describe('LocalCacheMaterializer', () => {
  let base: string
  let dir: string
  let store: CountingStore
  let cache: LocalCacheMaterializer

  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'shoal-cache-'))
  })
  after(async () => {
    await rm(base, { recursive: true, force: true })
  })
  beforeEach(async () => {
    dir = await mkdtemp(join(base, 'c-'))
    store = new CountingStore({ clock: { now: () => 1 }, logger }, { quotaBytes: 64 * 1024 * 1024 })
    await store.start()
    cache = new LocalCacheMaterializer({ store, logger }, { dir, durable: false })
    await cache.start()
  })
  afterEach(async () => {
    await cache.stop()
  })

  it("keeps its layers root's only: no other user reaches a layer's setuid binaries or device nodes", async () => {
    await chmod(join(dir, 'layers'), 0o755)
    await cache.start()
    assert.equal((await stat(join(dir, 'layers'))).mode & 0o777, 0o700)
  })

  it('extracts a layer once, for concurrent callers, and counts their references', async () => {
    const digest = await layerOf(store, 'etc/hello', 'hi')
    const [a, b] = await Promise.all([cache.materializeLayer(digest), cache.materializeLayer(digest)])
    assert.equal(a, join(dir, 'layers', digest.slice(7)))
    assert.equal(a, b)
    assert.equal(await readFile(join(a, 'etc/hello'), 'utf8'), 'hi')
    assert.deepEqual(store.streamed, [digest])
    assert.equal(cache.references(digest), 2)
    await cache.materializeLayer(digest)
    assert.deepEqual(store.streamed, [digest], 'an extracted layer is reused')
    assert.equal(cache.releaseLayer(digest), 2)
    assert.equal(cache.releaseLayer(digest), 1)
    assert.equal(cache.releaseLayer(digest), 0)
    assert.equal(cache.releaseLayer(digest), 0, 'releasing too often is harmless')
  })

  it('refuses a hyperlayer, a block-level layer only the LVM thin driver applies', async () => {
    const digest = await layerOf(store, 'f', 'x')
    await assert.rejects(
      cache.materialize([digest], { mediaTypes: { [digest]: 'application/vnd.shoal.hyperlayer.v1' } }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'UNSUPPORTED_MEDIA_TYPE')
        assert.match(err.message, /lvm-thin/)
        return true
      }
    )
    assert.deepEqual(store.streamed, [], 'nothing is read')
    assert.equal((await cache.materialize([digest], { mediaTypes: {} })).layers.length, 1)
  })

  it('reuses a layer extracted by an earlier process', async () => {
    const digest = await layerOf(store, 'f', 'x')
    await cache.materializeLayer(digest)
    const again = new LocalCacheMaterializer({ store, logger }, { dir })
    await again.start()
    await again.materializeLayer(digest)
    assert.deepEqual(store.streamed, [digest])
  })

  it('removes what a crash left half done when it starts', async () => {
    const stale = join(dir, 'layers', `${'a'.repeat(64)}.tmp-0123456789ab`)
    await mkdir(join(stale, 'etc'), { recursive: true })
    await cache.start()
    assert.deepEqual(await readdir(join(dir, 'layers')), [])
  })

  it('refuses a blob the store does not hold complete', async () => {
    await assert.rejects(cache.materializeLayer(digestOf(new Uint8Array([1]))), BlobUnknownError)
    assert.equal(cache.references(digestOf(new Uint8Array([1]))), 0)
  })

  it('refuses an unsafe layer, keeps nothing of it, and tries again next time', async () => {
    const digest = await layerOf(store, '../escape', 'x')
    await assert.rejects(cache.materializeLayer(digest), UnsafeLayerError)
    await assert.rejects(cache.materializeLayer(digest), UnsafeLayerError)
    assert.deepEqual(store.streamed, [digest, digest], 'a failure is not cached')
    assert.deepEqual(await readdir(join(dir, 'layers')), [])
    assert.equal(cache.references(digest), 0)
  })

  it('materializes an image: layers bottom first, lowerdirs top first, each layer once', async () => {
    const l1 = await layerOf(store, 'one', '1')
    const l2 = await layerOf(store, 'two', '2')
    const l3 = await layerOf(store, 'three', '3')
    const progress: MaterializeProgress[] = []
    const m = await cache.materialize([l1, l2, l1, l3], { onProgress: (p) => progress.push(p) })
    assert.equal(m.driver, 'local-cache')
    assert.equal(cache.driver, 'local-cache')
    assert.deepEqual(
      m.layers,
      [l1, l2, l1, l3].map((digest) => ({ digest, path: cache.layerPath(digest) }))
    )
    assert.deepEqual(m.mount, { type: 'overlay', lowerdirs: [l3, l1, l2].map((d) => cache.layerPath(d)) })
    assert.deepEqual(
      progress.map((p) => [p.done, p.total]),
      [
        [1, 3],
        [2, 3],
        [3, 3]
      ]
    )
    assert.deepEqual(new Set(progress.map((p) => p.digest)), new Set([l1, l2, l3]))
    for (const d of [l1, l2, l3]) assert.equal(cache.references(d), 1)
    await cache.materialize([l1, l2, l1, l3])
    assert.deepEqual(store.streamed.sort(), [l1, l2, l3].sort(), 'a second materialize extracts nothing')
    for (const d of [l1, l2, l3]) assert.equal(cache.references(d), 2)
    await cache.release([l1, l2, l1, l3])
    await cache.release([l1, l2, l1, l3])
    for (const d of [l1, l2, l3]) assert.equal(cache.references(d), 0)
  })

  it('gives back the references of an image when one layer fails', async () => {
    const good = await layerOf(store, 'good', 'g')
    const bad = await layerOf(store, '/etc/bad', 'b')
    await assert.rejects(cache.materialize([good, bad]), UnsafeLayerError)
    assert.equal(cache.references(good), 0)
  })

  it('refuses a malformed digest before extracting anything', async () => {
    const good = await layerOf(store, 'good', 'g')
    await assert.rejects(cache.materialize([good, 'sha256:1234']), InvalidDigestError)
    assert.deepEqual(store.streamed, [])
    assert.equal(cache.references(good), 0)
  })

  it('prunes the layers no one holds', async () => {
    const kept = await layerOf(store, 'kept', 'k')
    const dropped = await layerOf(store, 'dropped', 'd')
    await cache.materializeLayer(kept)
    await cache.materializeLayer(dropped)
    cache.releaseLayer(dropped)
    assert.deepEqual(await cache.prune(), [dropped])
    assert.deepEqual(await readdir(join(dir, 'layers')), [kept.slice(7)])
    await cache.materializeLayer(dropped)
    assert.equal(await readFile(join(cache.layerPath(dropped), 'dropped'), 'utf8'), 'd')
  })

  it('flushes a layer to disk before putting it in place when durable', async () => {
    const durable = new LocalCacheMaterializer({ store, logger }, { dir: join(dir, 'durable') })
    const digest = await layerOf(store, 'f', 'x')
    assert.equal(await readFile(join(await durable.materializeLayer(digest), 'f'), 'utf8'), 'x')
  })

  it('stops its waiters when their signal aborts', async () => {
    const digest = await layerOf(store, 'f', 'x')
    await assert.rejects(cache.materializeLayer(digest, { signal: AbortSignal.abort() }), { code: 'ABORTED' })
    assert.equal(cache.references(digest), 0)
    // The extraction others may share went on.
    await cache.materializeLayer(digest)
    assert.deepEqual(store.streamed, [digest])
  })

  it('refuses work once stopped', async () => {
    const digest = await layerOf(store, 'f', 'x')
    await cache.stop()
    await assert.rejects(cache.materializeLayer(digest), { code: 'ABORTED' })
  })
})
