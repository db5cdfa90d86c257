import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { beforeEach, describe, it } from 'node:test'
import { pino } from 'pino'
import { systemClock } from '../../../src/clock.ts'
import { accessKey } from '../../../src/content/access.ts'
import { digestOf } from '../../../src/content/digest.ts'
import { BlobFetcher } from '../../../src/fetch/blob-fetcher.ts'
import { ImagePuller } from '../../../src/fetch/image-puller.ts'
import { ManifestResolver } from '../../../src/fetch/manifests.ts'
import { OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST } from '../../../src/oci/media-types.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'
import { MemoryUpstream } from './memory-upstream.ts'

const logger = pino({ level: 'silent' })
const at = { registry: 'memory.test', repository: 'app' }
const platform = { os: 'linux', architecture: 'amd64' }

/** How each blob of a pull learns the access key it shows peers (decision 11). */
describe('access keys from manifests', () => {
  let upstream: MemoryUpstream
  let store: MemoryBlobStore
  let manifests: ManifestResolver
  let puller: ImagePuller
  let layer: string
  let config: string
  let platformBytes: Uint8Array
  let indexBytes: Uint8Array

  beforeEach(async () => {
    upstream = new MemoryUpstream()
    store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 16 * 1024 * 1024 })
    await store.start()
    const fetcher = new BlobFetcher({ store, upstreams: upstream, clock: systemClock, logger })
    manifests = new ManifestResolver({ store, upstreams: upstream, logger })
    puller = new ImagePuller({ manifests, fetcher, clock: systemClock, logger }, { platform })
    const layerBytes = randomBytes(5000)
    layer = upstream.addBlob(layerBytes)
    const configBytes = new TextEncoder().encode('{"architecture":"amd64","os":"linux"}')
    config = upstream.addBlob(configBytes)
    platformBytes = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: OCI_CONFIG, digest: config, size: configBytes.length },
        layers: [{ mediaType: OCI_LAYER_GZIP, digest: layer, size: layerBytes.length }]
      })
    )
    const platformDigest = upstream.addManifest('amd64', platformBytes, OCI_MANIFEST)
    indexBytes = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [{ mediaType: OCI_MANIFEST, digest: platformDigest, size: platformBytes.length, platform }]
      })
    )
    upstream.addManifest('v1', indexBytes, OCI_INDEX)
  })

  it("a pull through an index gives every blob the platform manifest's key, not the index's", async () => {
    await puller.pull('memory.test/app:v1')
    const key = accessKey(platformBytes)
    for (const d of [layer, config]) {
      assert.deepEqual(await store.access(d), { private: false, keys: [key] }, d)
    }
    assert.deepEqual(manifests.hint(layer)?.accessKey, key)
    assert.notDeepEqual(key, accessKey(indexBytes))
  })

  it('from a registry with credentials: blobs and the manifests themselves are private', async () => {
    upstream.credentialed = true
    await puller.pull('memory.test/app:v1')
    assert.deepEqual(await store.access(layer), { private: true, keys: [accessKey(platformBytes)] })
    // Manifests are private with no key: no proof opens them, a peer never gets one from us.
    for (const bytes of [indexBytes, platformBytes]) {
      assert.deepEqual(await store.access(digestOf(bytes)), { private: true, keys: [] })
    }
  })

  it('a manifest already stored public turns private when read again with credentials', async () => {
    await manifests.get({ ...at, reference: 'amd64' })
    assert.equal((await store.access(digestOf(platformBytes)))?.private, false)
    upstream.credentialed = true
    await manifests.get({ ...at, reference: 'amd64' })
    assert.equal((await store.access(digestOf(platformBytes)))?.private, true)
  })
})
