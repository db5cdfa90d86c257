import '../../../src/polyfill.ts'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { loadOrCreatePrivateKey } from '../../../src/p2p/identity.ts'

describe('loadOrCreatePrivateKey', () => {
  it('creates an Ed25519 key once (0600, no temp files left) and loads the same key afterwards', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-identity-'))
    try {
      const path = join(dir, 'node.key')
      const first = await loadOrCreatePrivateKey(path)
      assert.equal(first.type, 'Ed25519')
      const again = await loadOrCreatePrivateKey(path)
      assert.ok(again.equals(first))
      assert.equal(again.publicKey.toString(), first.publicKey.toString())
      assert.equal((await stat(path)).mode & 0o777, 0o600)
      assert.deepEqual(await readdir(dir), ['node.key'])
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('refuses a file that holds no key with CONFIG_INVALID', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-identity-'))
    try {
      const path = join(dir, 'node.key')
      await writeFile(path, 'garbage')
      await assert.rejects(loadOrCreatePrivateKey(path), { code: 'CONFIG_INVALID' })
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
