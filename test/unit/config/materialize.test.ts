import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { loadConfig, validateConfig } from '../../../src/config/load.ts'

describe('config: materialize', () => {
  it('defaults to the local cache, under the store directory unless a dir is given', async () => {
    const c = await loadConfig({ env: {} })
    assert.deepEqual(c.materialize, { driver: 'local-cache' })
    const d = validateConfig({ materialize: { dir: '/var/cache/shoal' } })
    assert.deepEqual(d.materialize, { driver: 'local-cache', dir: '/var/cache/shoal' })
  })

  it('accepts lvm-thin (the agent decides whether it can run it)', () => {
    assert.equal(validateConfig({ materialize: { driver: 'lvm-thin' } }).materialize.driver, 'lvm-thin')
  })

  it('refuses an unknown driver, an empty dir and unknown keys', () => {
    assert.throws(
      () => validateConfig({ materialize: { driver: 'zfs', dir: '', mountpoint: '/x' } }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'CONFIG_INVALID')
        for (const path of ['materialize.driver', 'materialize.dir', 'materialize']) {
          assert.ok(err.message.includes(`  ${path}:`), err.message)
        }
        return true
      }
    )
  })
})
