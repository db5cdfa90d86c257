import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { beforeEach, describe, it } from 'node:test'
import { pino } from 'pino'
import { systemClock } from '../../../src/clock.ts'
import { BlobFetcher } from '../../../src/fetch/blob-fetcher.ts'
import { ImagePins, pinName } from '../../../src/fetch/image-pins.ts'
import { ImagePuller } from '../../../src/fetch/image-puller.ts'
import { ManifestResolver } from '../../../src/fetch/manifests.ts'
import { OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST } from '../../../src/oci/media-types.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'
import { MemoryUpstream } from './memory-upstream.ts'

const logger = pino({ level: 'silent' })
const platform = { os: 'linux', architecture: 'amd64' }
const encode = (v: unknown) => new TextEncoder().encode(JSON.stringify(v))

describe('ImagePins', () => {
  let upstream: MemoryUpstream
  let store: MemoryBlobStore
  let pins: ImagePins
  let shared: string
  let only1: string
  let index: string

  /** An image of `layers` behind tag `tag`, through an index when `viaIndex`. */
  const image = (tag: string, layers: string[], viaIndex: boolean): string => {
    const config = upstream.addBlob(encode({ architecture: 'amd64', os: 'linux', tag }))
    const manifest = encode({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: {
        mediaType: OCI_CONFIG,
        digest: config,
        size: encode({ architecture: 'amd64', os: 'linux', tag }).length
      },
      layers: layers.map((digest) => ({ mediaType: OCI_LAYER_GZIP, digest, size: 3000 }))
    })
    const m = upstream.addManifest(viaIndex ? `${tag}-amd64` : tag, manifest, OCI_MANIFEST)
    if (!viaIndex) return m
    const list = encode({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [{ mediaType: OCI_MANIFEST, digest: m, size: manifest.length, platform }]
    })
    return upstream.addManifest(tag, list, OCI_INDEX)
  }

  beforeEach(async () => {
    upstream = new MemoryUpstream()
    store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 16 * 1024 * 1024 })
    await store.start()
    const fetcher = new BlobFetcher({ store, upstreams: upstream, clock: systemClock, logger })
    const manifests = new ManifestResolver({ store, upstreams: upstream, logger })
    const puller = new ImagePuller({ manifests, fetcher, clock: systemClock, logger }, { platform })
    pins = new ImagePins({ store, puller, logger })
    shared = upstream.addBlob(randomBytes(3000))
    only1 = upstream.addBlob(randomBytes(3000))
    index = image('v1', [shared, only1], true)
    image('v2', [shared, upstream.addBlob(randomBytes(3000))], false)
  })

  it('pins a reference: the pull, then its index, manifest, config and layers under its name', async () => {
    const pin = await pins.pin('memory.test/app:v1')
    assert.equal(pin.name, 'memory.test/app:v1')
    assert.equal(pin.digests.length, 5)
    assert.equal(pin.digests[0], index)
    for (const d of pin.digests) assert.deepEqual((await store.stat(d))?.pins, ['memory.test/app:v1'])
    assert.deepEqual(
      (await pins.list()).map((p) => [p.name, p.digests.length]),
      [['memory.test/app:v1', 5]]
    )
    // Pinned blobs survive an eviction of everything evictable; nothing else was in the store.
    assert.deepEqual((await store.evict()).evicted, [])
  })

  it('unpinning one image leaves a layer another pinned image shares', async () => {
    await pins.pin('memory.test/app:v1')
    await pins.pin('memory.test/app:v2')
    const gone = await pins.unpin('memory.test/app:v1')
    assert.equal(gone.digests.length, 5)
    assert.equal((await store.stat(shared))?.pinned, true, 'v2 still pins the shared layer')
    assert.equal((await store.stat(only1))?.pinned, false)
    const evicted = (await store.evict()).evicted.map((e) => e.digest)
    assert.ok(evicted.includes(only1))
    assert.ok(!evicted.includes(shared))
    await assert.rejects(pins.unpin('memory.test/app:v1'), { code: 'NOT_PINNED' })
  })

  it('pins a held index by digest with the manifests and blobs it names; refuses a blob not held', async () => {
    await pins.pin('memory.test/app:v1')
    await pins.unpin('memory.test/app:v1')
    const pin = await pins.pin(index)
    assert.equal(pin.name, index)
    assert.equal(pin.digests.length, 5)
    assert.equal((await store.stat(only1))?.pinned, true)
    await assert.rejects(pins.pin(`sha256:${'a'.repeat(64)}`), { code: 'BLOB_UNKNOWN' })
    assert.throws(() => pinName('sha256:short'), { code: 'INVALID_DIGEST' })
    assert.equal(pinName('busybox'), 'docker.io/library/busybox:latest')
  })
})
