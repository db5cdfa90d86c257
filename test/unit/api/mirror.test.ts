import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, beforeEach, describe, it } from 'node:test'
import { pino } from 'pino'
import { ShoalMetrics } from '../../../src/api/metrics.ts'
import { RegistryMirror } from '../../../src/api/mirror.ts'
import { systemClock } from '../../../src/clock.ts'
import { BlobFetcher } from '../../../src/fetch/blob-fetcher.ts'
import { ManifestResolver } from '../../../src/fetch/manifests.ts'
import { DOCKER_MANIFEST, OCI_MANIFEST } from '../../../src/oci/media-types.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'
import { MemoryUpstream } from '../fetch/memory-upstream.ts'

const logger = pino({ level: 'silent' })
const PIECE = 64 * 1024

describe('RegistryMirror (in process, memory seed)', () => {
  let upstream: MemoryUpstream
  let store: MemoryBlobStore
  let mirror: RegistryMirror
  let base: string
  let layer: Uint8Array
  let layerDigest: string
  let configDigest: string
  let manifestBytes: Uint8Array
  let manifestDigest: string

  before(async () => {
    upstream = new MemoryUpstream()
    store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 64 * 1024 * 1024 })
    await store.start()
    const metrics = new ShoalMetrics()
    const fetcher = new BlobFetcher(
      { store, upstreams: upstream, clock: systemClock, logger, metrics },
      { pieceSize: PIECE, registryConcurrency: 4, registryStreams: 4 }
    )
    await fetcher.start()
    const manifests = new ManifestResolver({ store, upstreams: upstream, logger })
    mirror = new RegistryMirror(
      { store, fetcher, manifests, upstreams: upstream, logger, metrics },
      { listen: '127.0.0.1:0', defaultRegistry: 'memory.test' }
    )
    await mirror.start()
    base = `http://${mirror.address}/v2/app`
    layer = randomBytes(5 * PIECE + 77)
    layerDigest = upstream.addBlob(layer)
    configDigest = upstream.addBlob(new TextEncoder().encode('{"architecture":"amd64","os":"linux"}'))
    // No mediaType in the JSON (as umoci writes it): the mirror must keep the upstream's type.
    manifestBytes = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: 37 },
        layers: [
          {
            mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
            digest: layerDigest,
            size: layer.length
          }
        ]
      })
    )
    manifestDigest = upstream.addManifest('v1', manifestBytes, OCI_MANIFEST)
  })
  after(async () => {
    await mirror.stop()
    await store.stop()
  })
  beforeEach(() => {
    upstream.tamper = undefined
  })

  it('answers HEAD of a manifest with digest, length and the exact upstream type', async () => {
    const res = await fetch(`${base}/manifests/v1?ns=memory.test`, { method: 'HEAD' })
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('docker-content-digest'), manifestDigest)
    assert.equal(res.headers.get('content-length'), String(manifestBytes.length))
    assert.equal(res.headers.get('content-type'), OCI_MANIFEST)
  })

  it('serves the manifest bytes verbatim by tag and by digest', async () => {
    for (const ref of ['v1', manifestDigest]) {
      const res = await fetch(`${base}/manifests/${ref}`)
      assert.equal(res.status, 200)
      assert.deepEqual(new Uint8Array(await res.arrayBuffer()), manifestBytes)
      assert.equal(res.headers.get('content-type'), OCI_MANIFEST)
    }
  })

  it('serves a verified blob with no Content-Encoding even when gzip is accepted', async () => {
    const res = await fetch(`${base}/blobs/${layerDigest}`, { headers: { 'accept-encoding': 'gzip' } })
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('content-encoding'), null)
    assert.equal(res.headers.get('docker-content-digest'), layerDigest)
    assert.deepEqual(new Uint8Array(await res.arrayBuffer()), new Uint8Array(layer))
    assert.equal((await store.stat(layerDigest))?.complete, true)
  })

  it('answers Range with 206 and the exact bytes (containerd resumes cut blobs this way)', async () => {
    const res = await fetch(`${base}/blobs/${layerDigest}`, { headers: { range: 'bytes=1000-' } })
    assert.equal(res.status, 206)
    assert.equal(res.headers.get('content-range'), `bytes 1000-${layer.length - 1}/${layer.length}`)
    assert.deepEqual(new Uint8Array(await res.arrayBuffer()), new Uint8Array(layer.subarray(1000)))
    const bad = await fetch(`${base}/blobs/${layerDigest}`, {
      headers: { range: `bytes=${layer.length + 5}-` }
    })
    assert.equal(bad.status, 416)
  })

  it('never serves a blob whose bytes do not match its digest, and keeps nothing of it', async () => {
    const evil = randomBytes(3 * PIECE)
    const digest = upstream.addBlob(evil)
    upstream.tamper = (d, start, data) => {
      if (d !== digest || start !== PIECE) return undefined
      const copy = new Uint8Array(data)
      copy[10] = (copy[10] ?? 0) ^ 0xff
      return copy
    }
    const res = await fetch(`${base}/blobs/${digest}`)
    assert.equal(res.status, 502)
    const body = (await res.json()) as { errors: { code: string; detail: { code: string } }[] }
    assert.equal(body.errors[0]?.detail.code, 'DIGEST_MISMATCH')
    assert.equal(await store.stat(digest), undefined)
  })

  it('answers a miss fast with the distribution error code', async () => {
    const m = await fetch(`${base}/manifests/nope`)
    assert.equal(m.status, 404)
    assert.equal(((await m.json()) as { errors: { code: string }[] }).errors[0]?.code, 'MANIFEST_UNKNOWN')
    const b = await fetch(`${base}/blobs/sha256:${'0'.repeat(64)}`)
    assert.equal(b.status, 404)
    assert.equal(((await b.json()) as { errors: { code: string }[] }).errors[0]?.code, 'BLOB_UNKNOWN')
  })

  it('rejects bad names and digests with 400, writes and unknown routes with 405/404', async () => {
    assert.equal((await fetch(`${base}/blobs/sha256:xyz`)).status, 400)
    assert.equal((await fetch(`http://${mirror.address}/v2/UPPER/manifests/v1`)).status, 400)
    assert.equal((await fetch(`${base}/blobs/uploads/`, { method: 'POST' })).status, 405)
    assert.equal((await fetch(`http://${mirror.address}/v2/_catalog`)).status, 404)
    const ping = await fetch(`http://${mirror.address}/v2/`)
    assert.equal(ping.status, 200)
    assert.equal(ping.headers.get('docker-distribution-api-version'), 'registry/2.0')
  })

  it('keeps a Docker schema 2 type as the upstream sent it', async () => {
    const bytes = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: DOCKER_MANIFEST,
        config: {
          mediaType: 'application/vnd.docker.container.image.v1+json',
          digest: configDigest,
          size: 37
        },
        layers: []
      })
    )
    upstream.addManifest('docker', bytes, DOCKER_MANIFEST)
    const res = await fetch(`${base}/manifests/docker`)
    assert.equal(res.headers.get('content-type'), DOCKER_MANIFEST)
    assert.deepEqual(new Uint8Array(await res.arrayBuffer()), bytes)
  })
})
