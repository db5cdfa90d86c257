import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { pino } from 'pino'
import { digestOf } from '../../../src/content/digest.ts'
import { OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST } from '../../../src/oci/media-types.ts'
import { OciLayoutUpstream } from '../../../src/registry/oci-layout-upstream.ts'

const logger = pino({ level: 'silent' })
const REF_NAME = 'org.opencontainers.image.ref.name'

/** Writes blobs and an index.json the way umoci and skopeo lay them out. */
async function makeLayout(dir: string, blobs: Uint8Array[], manifests: object[]): Promise<void> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true })
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  for (const b of blobs) await writeFile(join(dir, 'blobs', 'sha256', digestOf(b).slice(7)), b)
  await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests }))
}

function json(o: object): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(o))
}

describe('OciLayoutUpstream', () => {
  let root: string
  const layer = new Uint8Array(randomBytes(10_000))
  const manifest = json({
    schemaVersion: 2,
    layers: [{ mediaType: OCI_LAYER_GZIP, digest: digestOf(layer), size: layer.length }]
  })
  const index = json({ schemaVersion: 2, manifests: [] })
  let tagged: OciLayoutUpstream
  let unnamed: OciLayoutUpstream

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'shoal-layout-'))
    await makeLayout(
      join(root, 'tagged'),
      [layer, manifest, index],
      [
        {
          mediaType: OCI_MANIFEST,
          digest: digestOf(manifest),
          size: manifest.length,
          annotations: { [REF_NAME]: 'v1' }
        },
        { digest: digestOf(index), size: index.length, annotations: { [REF_NAME]: 'multi' } }
      ]
    )
    await makeLayout(
      join(root, 'unnamed'),
      [layer, manifest],
      [{ mediaType: OCI_MANIFEST, digest: digestOf(manifest), size: manifest.length }]
    )
    tagged = new OciLayoutUpstream({ logger }, { name: 'layout.local', dir: join(root, 'tagged') })
    unnamed = new OciLayoutUpstream({ logger }, { name: 'layout.local', dir: join(root, 'unnamed') })
  })
  after(async () => {
    await rm(root, { recursive: true, force: true })
  })

  it('is an oci-layout upstream', () => {
    assert.equal(tagged.kind, 'oci-layout')
    assert.equal(tagged.name, 'layout.local')
  })

  it('resolves a tag through the ref.name annotation, whatever the repository', async () => {
    const got = await tagged.getManifest('any/repo', 'v1')
    assert.equal(got.digest, digestOf(manifest))
    assert.equal(got.mediaType, OCI_MANIFEST)
    assert.equal(got.size, manifest.length)
    assert.deepEqual(got.bytes, manifest)
  })

  it('derives the media type when index.json gives none', async () => {
    const got = await tagged.getManifest('app', 'multi')
    assert.equal(got.mediaType, OCI_INDEX)
  })

  it('reads a manifest by digest', async () => {
    const got = await tagged.getManifest('app', digestOf(manifest))
    assert.deepEqual(got.bytes, manifest)
    const head = await tagged.headManifest('app', digestOf(manifest))
    assert.deepEqual(head, { digest: digestOf(manifest), mediaType: OCI_MANIFEST, size: manifest.length })
  })

  it('answers latest from a layout with one unnamed manifest', async () => {
    assert.equal((await unnamed.getManifest('app', 'latest')).digest, digestOf(manifest))
    await assert.rejects(unnamed.getManifest('app', 'v1'), { code: 'UPSTREAM_NOT_FOUND' })
    await assert.rejects(tagged.getManifest('app', 'latest'), { code: 'UPSTREAM_NOT_FOUND' })
  })

  it('unknown tags, manifests and blobs are UPSTREAM_NOT_FOUND', async () => {
    const missing = `sha256:${'0'.repeat(64)}`
    await assert.rejects(tagged.getManifest('app', 'nope'), { code: 'UPSTREAM_NOT_FOUND' })
    await assert.rejects(tagged.getManifest('app', missing), { code: 'UPSTREAM_NOT_FOUND' })
    await assert.rejects(tagged.fetchBlob('app', missing), { code: 'UPSTREAM_NOT_FOUND' })
    await assert.rejects(tagged.statBlob('app', missing), { code: 'UPSTREAM_NOT_FOUND' })
    const nowhere = new OciLayoutUpstream({ logger }, { name: 'x', dir: join(root, 'absent') })
    await assert.rejects(nowhere.getManifest('app', 'v1'), { code: 'UPSTREAM_NOT_FOUND' })
  })

  it('stats and reads blobs, whole and by range', async () => {
    const d = digestOf(layer)
    assert.deepEqual(await tagged.statBlob('app', d), { size: layer.length })
    assert.deepEqual(await tagged.fetchBlob('app', d), layer)
    assert.deepEqual(
      await tagged.fetchBlob('app', d, { range: { start: 123, end: 4567 } }),
      layer.subarray(123, 4567)
    )
    assert.deepEqual(
      await tagged.fetchBlob('app', d, { range: { start: 9000, end: 10_000 } }),
      layer.subarray(9000)
    )
  })

  it('a range past the end is SIZE_MISMATCH', async () => {
    await assert.rejects(tagged.fetchBlob('app', digestOf(layer), { range: { start: 9000, end: 10_001 } }), {
      code: 'SIZE_MISMATCH'
    })
  })

  it('a manifest file whose bytes do not match its name is DIGEST_MISMATCH', async () => {
    const dir = join(root, 'corrupt')
    await makeLayout(
      dir,
      [],
      [{ mediaType: OCI_MANIFEST, digest: digestOf(manifest), annotations: { [REF_NAME]: 'v1' } }]
    )
    await writeFile(join(dir, 'blobs', 'sha256', digestOf(manifest).slice(7)), json({ tampered: true }))
    const u = new OciLayoutUpstream({ logger }, { name: 'x', dir })
    await assert.rejects(u.getManifest('app', digestOf(manifest)), { code: 'DIGEST_MISMATCH' })
    await assert.rejects(u.getManifest('app', 'v1'), { code: 'DIGEST_MISMATCH' })
  })

  it('honours an aborted signal', async () => {
    const ac = new AbortController()
    ac.abort()
    await assert.rejects(tagged.fetchBlob('app', digestOf(layer), { signal: ac.signal }))
  })
})
