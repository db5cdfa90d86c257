import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { MAX_MANIFEST_LAYERS, parseManifest, selfDescribedMediaType } from '../../../src/oci/manifest.ts'
import { DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST } from '../../../src/oci/media-types.ts'
import { defaultPlatform, parsePlatform, selectManifest } from '../../../src/oci/platform.ts'

const d = (c: string) => `sha256:${c.repeat(64)}`
const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o))

const manifest = {
  schemaVersion: 2,
  mediaType: OCI_MANIFEST,
  config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: d('c'), size: 100 },
  layers: [
    {
      mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
      digest: d('1'),
      size: 10,
      annotations: { x: 'y' }
    },
    { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: d('2'), size: 20 }
  ]
}

const index = (entries: unknown[]) => ({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: entries })
const entry = (c: string, platform?: unknown) => ({
  mediaType: OCI_MANIFEST,
  digest: d(c),
  size: 500,
  platform
})

describe('parseManifest', () => {
  it('parses an OCI manifest into config and layers', () => {
    const m = parseManifest(enc(manifest), OCI_MANIFEST)
    assert.equal(m.kind, 'manifest')
    assert.ok(m.kind === 'manifest')
    assert.equal(m.config.digest, d('c'))
    assert.deepEqual(
      m.layers.map((l) => [l.digest, l.size]),
      [
        [d('1'), 10],
        [d('2'), 20]
      ]
    )
  })

  it('takes the kind from the content type, ignoring parameters', () => {
    const m = parseManifest(enc({ ...manifest, mediaType: undefined }), `${DOCKER_MANIFEST}; charset=utf-8`)
    assert.equal(m.mediaType, DOCKER_MANIFEST)
  })

  it('recognises a manifest or index without mediaType by its shape (OCI layouts)', () => {
    assert.equal(parseManifest(enc({ ...manifest, mediaType: undefined })).kind, 'manifest')
    assert.equal(parseManifest(enc({ schemaVersion: 2, manifests: [entry('a')] })).kind, 'index')
  })

  it('refuses Docker schema 1 with UNSUPPORTED_MEDIA_TYPE', () => {
    assert.throws(() => parseManifest(enc({ schemaVersion: 1, name: 'x', fsLayers: [] })), {
      code: 'UNSUPPORTED_MEDIA_TYPE'
    })
  })

  it('rejects malformed documents with INVALID_MANIFEST naming the field', () => {
    assert.throws(() => parseManifest(new TextEncoder().encode('{nope')), { code: 'INVALID_MANIFEST' })
    assert.throws(() => parseManifest(enc([1, 2])), { code: 'INVALID_MANIFEST' })
    assert.throws(
      () =>
        parseManifest(enc({ ...manifest, layers: [{ mediaType: 'x', digest: 'sha256:short', size: 1 }] })),
      { code: 'INVALID_MANIFEST', message: /layers\.0\.digest/ }
    )
    assert.throws(() => parseManifest(enc({ ...manifest, config: { ...manifest.config, size: -1 } })), {
      code: 'INVALID_MANIFEST'
    })
  })

  it('refuses more layers than overlayfs can stack (a manifest naming thousands of missing blobs)', () => {
    const layers = (n: number) => Array.from({ length: n }, () => manifest.layers[1])
    assert.equal(parseManifest(enc({ ...manifest, layers: layers(MAX_MANIFEST_LAYERS) })).kind, 'manifest')
    assert.throws(() => parseManifest(enc({ ...manifest, layers: layers(MAX_MANIFEST_LAYERS + 1) })), {
      code: 'INVALID_MANIFEST',
      message: /layers: at most 500 layers/
    })
  })
})

describe('selectManifest', () => {
  const idx = parseManifest(
    enc(
      index([
        entry('a', { os: 'linux', architecture: 'amd64' }),
        entry('b', { os: 'linux', architecture: 'arm', variant: 'v7' }),
        entry('c', { os: 'linux', architecture: 'arm64', variant: 'v8' }),
        entry('e', { os: 'unknown', architecture: 'unknown' })
      ])
    )
  )
  assert.ok(idx.kind === 'index')

  it('picks by os and architecture', () => {
    assert.equal(selectManifest(idx, parsePlatform('linux/amd64')).digest, d('a'))
  })
  it('treats arm64 without a variant as v8', () => {
    assert.equal(selectManifest(idx, parsePlatform('linux/arm64')).digest, d('c'))
  })
  it('fails with NO_MATCHING_PLATFORM listing what the index has', () => {
    assert.throws(() => selectManifest(idx, parsePlatform('linux/s390x')), {
      code: 'NO_MATCHING_PLATFORM',
      message: /linux\/amd64, linux\/arm\/v7, linux\/arm64\/v8/
    })
    assert.throws(() => selectManifest(idx, parsePlatform('linux/arm/v6')), { code: 'NO_MATCHING_PLATFORM' })
  })
  it('knows this machine', () => {
    const p = defaultPlatform()
    assert.equal(p.os, 'linux')
    assert.ok(['amd64', 'arm64'].includes(p.architecture))
  })
  it('rejects a malformed platform string', () => {
    assert.throws(() => parsePlatform('linux'), { code: 'INVALID_REFERENCE' })
  })
})

describe('selfDescribedMediaType', () => {
  it('takes the field when present, else the shape', () => {
    assert.equal(selfDescribedMediaType(enc(manifest)), OCI_MANIFEST)
    assert.equal(selfDescribedMediaType(enc({ ...manifest, mediaType: DOCKER_MANIFEST })), DOCKER_MANIFEST)
    assert.equal(selfDescribedMediaType(enc({ ...manifest, mediaType: undefined })), OCI_MANIFEST)
    assert.equal(selfDescribedMediaType(enc({ schemaVersion: 2, manifests: [] })), OCI_INDEX)
  })
  it('refuses what is not a JSON object', () => {
    assert.throws(() => selfDescribedMediaType(new TextEncoder().encode('nope')), {
      code: 'INVALID_MANIFEST'
    })
    assert.throws(() => selfDescribedMediaType(enc([])), { code: 'INVALID_MANIFEST' })
  })
})
