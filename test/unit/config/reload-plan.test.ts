import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { validateConfig } from '../../../src/config/load.ts'
import { planReload } from '../../../src/config/reload-plan.ts'
import { MiB } from '../../../src/constants.ts'

const base = {
  storeDir: '/var/lib/shoal',
  store: { quota: '1GiB' },
  fetch: { downloadRate: '10MB' },
  registries: { 'r.example': { url: 'https://r.example', username: 'u', password: 'old' } }
}

describe('planReload', () => {
  it('applies the live keys, leaves the rest to a restart, and keeps the rest as it runs', () => {
    const running = validateConfig(base)
    const next = validateConfig({
      ...base,
      storeDir: '/elsewhere',
      store: { quota: '2GiB', pieceSize: '8MiB' },
      fetch: {},
      swarm: { uploadRate: '5MB' },
      log: { level: 'debug' },
      registries: { 'r.example': { url: 'https://r.example', username: 'u', password: 'new' } }
    })
    const plan = planReload(running, next)
    assert.deepEqual(plan.applied, [
      'fetch.downloadRate',
      'log.level',
      'registries.r.example.password',
      'store.quota',
      'swarm.uploadRate'
    ])
    assert.deepEqual(plan.restart, ['store.pieceSize', 'storeDir'])
    // Live keys take the new values, a removed one included; the others keep the running ones.
    assert.equal(plan.config.store.quota, 2 * 1024 * MiB)
    assert.equal(plan.config.fetch.downloadRate, undefined)
    assert.equal(plan.config.log.level, 'debug')
    assert.equal(plan.config.registries['r.example']?.password, 'new')
    assert.equal(plan.config.storeDir, '/var/lib/shoal')
    assert.equal(plan.config.store.pieceSize, running.store.pieceSize)
    // The running configuration itself is left alone.
    assert.equal(running.store.quota, 1024 * MiB)
    assert.equal(running.registries['r.example']?.password, 'old')
  })

  it('plans nothing for the same configuration, and never carries values', () => {
    const plan = planReload(validateConfig(base), validateConfig(base))
    assert.deepEqual(plan.applied, [])
    assert.deepEqual(plan.restart, [])
    const changed = planReload(
      validateConfig(base),
      validateConfig({ ...base, registries: { 'r.example': { token: 'secret-token' } } })
    )
    assert.ok(!JSON.stringify([changed.applied, changed.restart]).includes('secret'))
    assert.ok(changed.applied.includes('registries.r.example.token'))
  })
})
