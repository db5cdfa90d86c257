import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { pino } from 'pino'
import { digestOf } from '../../../src/content/digest.ts'
import { OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST } from '../../../src/oci/media-types.ts'
import { RegistryUpstream } from '../../../src/registry/registry-upstream.ts'
import { startRegistry, type TestRegistry } from '../../harness/registry.ts'

const logger = pino({ level: 'silent' })
const REPO = 'shoal/test-app'

async function pushBlob(registry: TestRegistry, repo: string, bytes: Uint8Array): Promise<string> {
  const digest = digestOf(bytes)
  const start = await fetch(`${registry.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' })
  await start.arrayBuffer()
  assert.equal(start.status, 202)
  const location = new URL(start.headers.get('location') ?? '', registry.url)
  location.searchParams.set('digest', digest)
  const put = await fetch(location, {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream' },
    body: bytes
  })
  await put.arrayBuffer()
  assert.equal(put.status, 201)
  return digest
}

describe('RegistryUpstream against the real docker-registry', () => {
  let registry: TestRegistry
  let upstream: RegistryUpstream
  const layer = new Uint8Array(randomBytes(300_000))
  const config = new TextEncoder().encode(JSON.stringify({ architecture: 'amd64', os: 'linux' }))
  let layerDigest: string
  let manifestBytes: Uint8Array
  let manifestDigest: string

  before(async () => {
    registry = await startRegistry()
    layerDigest = await pushBlob(registry, REPO, layer)
    const configDigest = await pushBlob(registry, REPO, config)
    // No mediaType field, like umoci's manifests: the type lives only in Content-Type.
    manifestBytes = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        config: { mediaType: OCI_CONFIG, digest: configDigest, size: config.length },
        layers: [{ mediaType: OCI_LAYER_GZIP, digest: layerDigest, size: layer.length }]
      })
    )
    manifestDigest = digestOf(manifestBytes)
    const put = await fetch(`${registry.url}/v2/${REPO}/manifests/v1`, {
      method: 'PUT',
      headers: { 'content-type': OCI_MANIFEST },
      body: manifestBytes
    })
    await put.arrayBuffer()
    assert.equal(put.status, 201)
    upstream = new RegistryUpstream(
      { logger },
      {
        name: registry.host,
        url: registry.url,
        connectTimeoutMs: 2000,
        responseTimeoutMs: 5000,
        bodyTimeoutMs: 5000,
        retries: 1
      }
    )
  })
  after(async () => {
    await upstream?.close()
    await registry?.stop()
  })

  it('gets a manifest by tag and by digest with its exact bytes and type', async () => {
    const byTag = await upstream.getManifest(REPO, 'v1')
    assert.equal(byTag.digest, manifestDigest)
    assert.equal(byTag.mediaType, OCI_MANIFEST)
    assert.deepEqual(byTag.bytes, manifestBytes)
    const byDigest = await upstream.getManifest(REPO, manifestDigest)
    assert.equal(byDigest.digest, manifestDigest)
    assert.equal(byDigest.size, manifestBytes.length)
  })

  it('heads a manifest', async () => {
    const head = await upstream.headManifest(REPO, 'v1')
    assert.deepEqual(head, { digest: manifestDigest, mediaType: OCI_MANIFEST, size: manifestBytes.length })
  })

  it('stats and fetches a blob, whole and by range, counting each byte', async () => {
    registry.resetCounters()
    assert.deepEqual(await upstream.statBlob(REPO, layerDigest), { size: layer.length })
    const whole = await upstream.fetchBlob(REPO, layerDigest)
    assert.deepEqual(whole, layer)
    const part = await upstream.fetchBlob(REPO, layerDigest, { range: { start: 1000, end: 70_000 } })
    assert.deepEqual(part, layer.subarray(1000, 70_000))
    const tail = await upstream.fetchBlob(REPO, layerDigest, { range: { start: 299_990, end: 300_000 } })
    assert.deepEqual(tail, layer.subarray(299_990))
    assert.equal(registry.blobGets(layerDigest), 3)
    assert.equal(registry.bytesServed(layerDigest), layer.length + 69_000 + 10)
    const heads = registry.requests().filter((r) => r.method === 'HEAD')
    assert.equal(heads.length, 1)
    assert.equal(heads[0]?.status, 200)
    assert.equal(heads[0]?.bytes, 0)
    assert.ok(registry.requests().some((r) => r.status === 206))
  })

  it('maps unknown manifests and blobs to UPSTREAM_NOT_FOUND', async () => {
    await assert.rejects(upstream.getManifest(REPO, 'nope'), { code: 'UPSTREAM_NOT_FOUND' })
    await assert.rejects(upstream.headManifest('shoal/other', 'v1'), { code: 'UPSTREAM_NOT_FOUND' })
    const missing = `sha256:${'0'.repeat(64)}`
    await assert.rejects(upstream.fetchBlob(REPO, missing), { code: 'UPSTREAM_NOT_FOUND' })
    await assert.rejects(upstream.statBlob(REPO, missing), { code: 'UPSTREAM_NOT_FOUND' })
  })

  it('a range past the end of the blob is a size mismatch', async () => {
    await assert.rejects(upstream.fetchBlob(REPO, layerDigest, { range: { start: 299_000, end: 300_100 } }), {
      code: 'SIZE_MISMATCH'
    })
  })

  it('serves corrupted bytes after corruptBlob, keeping the size', async () => {
    const victim = await pushBlob(registry, REPO, new Uint8Array(randomBytes(4096)))
    await registry.corruptBlob(victim)
    const bytes = await upstream.fetchBlob(REPO, victim)
    assert.equal(bytes.length, 4096)
    assert.notEqual(digestOf(bytes), victim)
  })
})
