import assert from 'node:assert/strict'
import { createHmac, randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import { accessKey, accessProof, rendezvousDigest, verifyAccessProof } from '../../../src/content/access.ts'
import { digestOf } from '../../../src/content/digest.ts'

const manifest = new TextEncoder().encode('{"schemaVersion":2,"layers":[]}')
const other = new TextEncoder().encode('{"schemaVersion":2,"layers":[] }')
const blob = digestOf(new TextEncoder().encode('a layer'))
const blob2 = digestOf(new TextEncoder().encode('another layer'))
const client = '12D3KooWClientAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'
const server = '12D3KooWServerBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB'
const third = '12D3KooWThirdCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC'

describe('access proofs', () => {
  it('derives the access key from the manifest bytes as HMAC-SHA256(bytes, "shoal-access-v1")', () => {
    const key = accessKey(manifest)
    assert.equal(key.length, 32)
    const expected = createHmac('sha256', manifest).update('shoal-access-v1').digest()
    assert.deepEqual([...key], [...expected])
    // One byte of whitespace is another manifest, another key; the digest is not the key.
    assert.notDeepEqual([...accessKey(other)], [...key])
    assert.notDeepEqual([...accessKey(new TextEncoder().encode(digestOf(manifest)))], [...key])
  })

  it('binds a proof to the blob, the client and the server', () => {
    const key = accessKey(manifest)
    const proof = accessProof(key, blob, client, server)
    assert.equal(proof.length, 32)
    assert.deepEqual([...accessProof(key, blob, client, server)], [...proof], 'deterministic')
    assert.ok(verifyAccessProof([key], proof, blob, client, server))
    assert.ok(!verifyAccessProof([key], proof, blob2, client, server), 'another blob')
    assert.ok(!verifyAccessProof([key], proof, blob, third, server), 'another client')
    assert.ok(!verifyAccessProof([key], proof, blob, client, third), 'replayed to another server')
    assert.ok(!verifyAccessProof([key], proof, blob, server, client), 'roles swapped')
    assert.ok(!verifyAccessProof([accessKey(other)], proof, blob, client, server), 'another manifest')
  })

  it('verifies against any of the keys recorded, and refuses missing or malformed proofs', () => {
    const keys = [accessKey(other), accessKey(manifest), randomBytes(32)]
    const proof = accessProof(accessKey(manifest), blob, client, server)
    assert.ok(verifyAccessProof(keys, proof, blob, client, server))
    assert.ok(!verifyAccessProof([], proof, blob, client, server), 'no keys recorded')
    assert.ok(!verifyAccessProof(keys, undefined, blob, client, server), 'no proof')
    assert.ok(!verifyAccessProof(keys, proof.subarray(0, 31), blob, client, server), 'short proof')
    assert.ok(!verifyAccessProof(keys, new Uint8Array(32), blob, client, server), 'zero proof')
    const flipped = Uint8Array.from(proof)
    flipped[31] = (flipped[31] as number) ^ 1
    assert.ok(!verifyAccessProof(keys, flipped, blob, client, server), 'one bit off')
    // A malformed key recorded is skipped, not an error.
    assert.ok(verifyAccessProof([new Uint8Array(3), accessKey(manifest)], proof, blob, client, server))
  })

  it('length-prefixes the peer ids, so moving a byte between them changes the proof', () => {
    const key = accessKey(manifest)
    const a = accessProof(key, blob, 'QmAB', 'QmC')
    const b = accessProof(key, blob, 'QmA', 'BQmC')
    assert.notDeepEqual([...a], [...b])
    assert.throws(() => accessProof(key, blob, '', server), { code: 'PROTOCOL_VIOLATION' })
    assert.throws(() => accessProof(new Uint8Array(16), blob, client, server), { code: 'PROTOCOL_VIOLATION' })
    assert.throws(() => accessProof(key, 'sha256:nope', client, server), { code: 'INVALID_DIGEST' })
  })

  it('gives a rendezvous key per manifest and blob that is not the blob digest', () => {
    const key = accessKey(manifest)
    const r = rendezvousDigest(key, blob)
    assert.match(r, /^sha256:[a-f0-9]{64}$/)
    assert.equal(rendezvousDigest(key, blob), r)
    assert.notEqual(r, blob)
    assert.notEqual(rendezvousDigest(key, blob2), r)
    assert.notEqual(rendezvousDigest(accessKey(other), blob), r)
  })
})
