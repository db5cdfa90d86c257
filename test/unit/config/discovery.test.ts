import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { validateConfig } from '../../../src/config/load.ts'

describe('config: swarm discovery keys', () => {
  it('has no DNS discovery and no mDNS by default', () => {
    const c = validateConfig({})
    assert.equal(c.swarm.dnsDiscovery, undefined)
    assert.equal(c.swarm.mdns, false)
  })

  it('takes a name and a port, with a 30s interval by default or a duration', () => {
    const c = validateConfig({
      swarm: { dnsDiscovery: { name: 'shoal.ns.svc.cluster.local', port: 4001 }, mdns: true }
    })
    assert.deepEqual(c.swarm.dnsDiscovery, {
      name: 'shoal.ns.svc.cluster.local',
      port: 4001,
      interval: 30_000
    })
    assert.equal(c.swarm.mdns, true)
    const d = validateConfig({ swarm: { dnsDiscovery: { name: 'x', port: 1, interval: '2m' } } })
    assert.equal(d.swarm.dnsDiscovery?.interval, 120_000)
  })

  it('refuses a missing port, a bad port, a sub-second interval and unknown keys, all at once', () => {
    assert.throws(
      () => validateConfig({ swarm: { dnsDiscovery: { name: 'x' } } }),
      (err: Error) => /swarm\.dnsDiscovery\.port/.test(err.message)
    )
    assert.throws(
      () =>
        validateConfig({
          swarm: { dnsDiscovery: { name: '', port: 70000, interval: '500ms', ttl: 1 }, mdns: 'yes' }
        }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'CONFIG_INVALID')
        for (const path of [
          'dnsDiscovery.name',
          'dnsDiscovery.port',
          'dnsDiscovery.interval',
          'dnsDiscovery',
          'swarm.mdns'
        ]) {
          assert.ok(err.message.includes(path), `${path} in ${err.message}`)
        }
        return true
      }
    )
  })
})
