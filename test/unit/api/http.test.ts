import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { decodePathPart, parseRange } from '../../../src/api/http.ts'

describe('parseRange', () => {
  const size = 1000
  it('reads the three single-range forms', () => {
    assert.deepEqual(parseRange('bytes=0-99', size), { start: 0, end: 100 })
    assert.deepEqual(parseRange('bytes=900-', size), { start: 900, end: 1000 })
    assert.deepEqual(parseRange('bytes=-10', size), { start: 990, end: 1000 })
    assert.deepEqual(parseRange('bytes=990-5000', size), { start: 990, end: 1000 })
  })
  it('means the whole blob without a header or with several ranges', () => {
    assert.equal(parseRange(undefined, size), undefined)
    assert.equal(parseRange('bytes=0-1,5-6', size), undefined)
  })
  it('refuses ranges outside the blob and malformed headers with typed errors', () => {
    assert.throws(() => parseRange('bytes=1000-', size), { code: 'RANGE_NOT_SATISFIABLE' })
    assert.throws(() => parseRange('bytes=5-2', size), { code: 'RANGE_NOT_SATISFIABLE' })
    assert.throws(() => parseRange('bytes=-', size), { code: 'BAD_REQUEST' })
    assert.throws(() => parseRange('items=0-1', size), { code: 'BAD_REQUEST' })
  })
})

describe('decodePathPart', () => {
  it('decodes percent-encoding and refuses a malformed one with BAD_REQUEST, not a URIError', () => {
    assert.equal(decodePathPart('sha256%3Aab'), 'sha256:ab')
    for (const bad of ['%', '%E0%A4%A', '%zz'])
      assert.throws(() => decodePathPart(bad), { code: 'BAD_REQUEST' })
  })
})
