import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const PATCH = fileURLToPath(new URL('../../../src/p2p/xsalsa20-patch.ts', import.meta.url))

// Two ciphers (a connection's inbound and outbound) taking turns with updates larger than any
// before, as pnet does with a busy send queue. Run in a child so each case gets a fresh module.
const script = (patch: boolean) => `
  ${patch ? `await import(${JSON.stringify(PATCH)})` : ''}
  const { createRequire } = await import('node:module')
  const XSalsa20 = createRequire(${JSON.stringify(import.meta.url)})('xsalsa20')
  const key = new Uint8Array(32).fill(7)
  const a = new XSalsa20(new Uint8Array(24).fill(1), key)
  const b = new XSalsa20(new Uint8Array(24).fill(2), key)
  for (let i = 0; i < 200; i++) {
    a.update(new Uint8Array(1024 * 1024 + i))
    b.update(new Uint8Array(1024 * 1024 + i))
  }
  process.stdout.write('survived')
`

function run(patch: boolean) {
  return spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script(patch)], {
    encoding: 'utf8',
    cwd: fileURLToPath(new URL('../../../', import.meta.url))
  })
}

describe('xsalsa20 shared-memory fix', () => {
  it('unpatched, alternating large updates exhaust the WebAssembly memory (the bug is real)', () => {
    const r = run(false)
    assert.notEqual(r.status, 0)
    assert.match(r.stderr, /Maximum memory size exceeded/)
  })

  it('patched, they run on in bounded memory', () => {
    const r = run(true)
    assert.equal(r.status, 0, r.stderr)
    assert.equal(r.stdout, 'survived')
  })

  it('still encrypts like the original: a keystream XOR that round-trips', async () => {
    await import('../../../src/p2p/xsalsa20-patch.ts')
    const XSalsa20 = require('xsalsa20')
    const key = new Uint8Array(32).fill(9)
    const nonce = new Uint8Array(24).fill(3)
    const plain = new Uint8Array(3 * 1024 * 1024).map((_, i) => i % 251)
    const enc = new XSalsa20(nonce, key).update(plain)
    const dec = new XSalsa20(nonce, key).update(enc)
    assert.notDeepEqual(enc.subarray(0, 64), plain.subarray(0, 64))
    assert.deepEqual(dec, plain)
  })
})
