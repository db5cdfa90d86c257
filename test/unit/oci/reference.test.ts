import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { formatReference, parseReference } from '../../../src/oci/reference.ts'

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
