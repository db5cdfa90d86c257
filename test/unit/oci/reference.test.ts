import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  formatReference,
  parseReference,
  parseRegistryHost,
  parseTagOrDigest
} from '../../../src/oci/reference.ts'

const D = `sha256:${'a'.repeat(64)}`

describe('parseReference', () => {
  const cases: [string, ReturnType<typeof parseReference>][] = [
    ['busybox', { registry: 'docker.io', repository: 'library/busybox', tag: 'latest' }],
    ['busybox:1.36', { registry: 'docker.io', repository: 'library/busybox', tag: '1.36' }],
    ['bitnami/redis', { registry: 'docker.io', repository: 'bitnami/redis', tag: 'latest' }],
    ['index.docker.io/library/alpine:3', { registry: 'docker.io', repository: 'library/alpine', tag: '3' }],
    ['ghcr.io/org/team/app:v1', { registry: 'ghcr.io', repository: 'org/team/app', tag: 'v1' }],
    ['localhost/app', { registry: 'localhost', repository: 'app', tag: 'latest' }],
    [
      '127.0.0.1:5000/test/tiny:latest',
      { registry: '127.0.0.1:5000', repository: 'test/tiny', tag: 'latest' }
    ],
    [`quay.io/a/b@${D}`, { registry: 'quay.io', repository: 'a/b', digest: D }],
    [`quay.io/a/b:v2@${D}`, { registry: 'quay.io', repository: 'a/b', tag: 'v2', digest: D }],
    ['my-registry:5000/x', { registry: 'my-registry:5000', repository: 'x', tag: 'latest' }]
  ]
  for (const [input, want] of cases) {
    it(`parses ${input}`, () => assert.deepEqual(parseReference(input), want))
  }

  for (const bad of [
    '',
    'UPPER/case',
    'a//b',
    'repo:',
    'repo:-bad',
    `repo@sha256:${'z'.repeat(64)}`,
    'a b',
    'repo@md5:abc'
  ]) {
    it(`rejects ${JSON.stringify(bad)} with INVALID_REFERENCE`, () => {
      assert.throws(() => parseReference(bad), { code: 'INVALID_REFERENCE' })
    })
  }

  it('round-trips through formatReference', () => {
    const ref = parseReference(`ghcr.io/org/app:v1@${D}`)
    assert.deepEqual(parseReference(formatReference(ref)), ref)
  })
})

describe('parseRegistryHost and parseTagOrDigest', () => {
  it('take hosts and tags or digests as references name them', () => {
    for (const h of ['docker.io', 'localhost:5000', '127.0.0.1:5000', '[::1]:5000', 'r-1.example.com'])
      assert.equal(parseRegistryHost(h), h)
    assert.equal(parseTagOrDigest('v1.2-rc_3'), 'v1.2-rc_3')
    assert.equal(parseTagOrDigest(`sha256:${'a'.repeat(64)}`), `sha256:${'a'.repeat(64)}`)
  })

  it('refuse what would change the URL they go into: paths, credentials, spaces, traversal', () => {
    for (const h of ['evil host', '127.0.0.1/../x', 'user:pw@127.0.0.1', 'a/b', '', 'x'.repeat(300)])
      assert.throws(() => parseRegistryHost(h), { code: 'INVALID_REFERENCE' })
    for (const t of ['../../v2/other/manifests/v1', 'a/b', '', '.hidden', 't'.repeat(129)])
      assert.throws(() => parseTagOrDigest(t), { code: 'INVALID_REFERENCE' })
    assert.throws(() => parseTagOrDigest('sha256:xyz'), { code: 'INVALID_DIGEST' })
  })
})
