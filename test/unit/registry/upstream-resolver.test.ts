import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { describe, it } from 'node:test'
import { pino } from 'pino'
import { StaticUpstreamResolver } from '../../../src/registry/upstream-resolver.ts'

const logger = pino({ level: 'silent' })
const timeouts = { connectTimeoutMs: 500, responseTimeoutMs: 1000, bodyTimeoutMs: 1000, retries: 0 }

describe('StaticUpstreamResolver', () => {
  it('shares one Docker Hub upstream for its aliases', async () => {
    const r = new StaticUpstreamResolver({ logger }, { registries: {}, ...timeouts })
    const hub = r.resolve('docker.io')
    assert.equal(hub.name, 'docker.io')
    assert.equal(hub.kind, 'registry')
    assert.equal(r.resolve('index.docker.io'), hub)
    assert.equal(r.resolve('registry-1.docker.io'), hub)
    assert.equal(r.resolve('ghcr.io').name, 'ghcr.io')
    assert.equal(r.resolve('ghcr.io'), r.resolve('GHCR.io'))
    await r.close()
  })

  it('a configured layout wins', async () => {
    const r = new StaticUpstreamResolver(
      { logger },
      { registries: { 'docker.io': { layout: '/nowhere' } }, ...timeouts }
    )
    assert.equal(r.resolve('docker.io').kind, 'oci-layout')
    assert.equal(r.resolve('quay.io').kind, 'registry')
    await r.close()
  })

  it('reaches an unconfigured loopback host over plain http', async () => {
    const server = createServer((_req, res) => {
      res.writeHead(200, { 'content-length': 3 })
      res.end('abc')
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
    const { port } = server.address() as AddressInfo
    const r = new StaticUpstreamResolver({ logger }, { registries: {}, ...timeouts })
    try {
      const up = r.resolve(`127.0.0.1:${port}`)
      assert.deepEqual(await up.statBlob('app', `sha256:${'1'.repeat(64)}`), { size: 3 })
    } finally {
      await r.close()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  })

  it('a reload replaces the upstreams whose entry or timeouts changed, and only those', async () => {
    const r = new StaticUpstreamResolver(
      { logger },
      {
        registries: { 'a.example': { url: 'https://a.example' }, 'b.example': { layout: '/b' } },
        ...timeouts
      }
    )
    const a = r.resolve('a.example')
    const b = r.resolve('b.example')
    assert.equal(a.credentialed, false)
    const replaced = r.reconfigure({
      registries: {
        'a.example': { url: 'https://a.example', username: 'robot', password: 'pw' },
        'b.example': { layout: '/b' }
      },
      ...timeouts
    })
    assert.deepEqual(replaced, ['a.example'])
    assert.notEqual(r.resolve('a.example'), a)
    assert.equal(r.resolve('a.example').credentialed, true)
    assert.equal(r.resolve('b.example'), b)
    // New timeouts reach every upstream.
    assert.deepEqual(r.reconfigure({ registries: {}, ...timeouts, retries: 2 }).sort(), [
      'a.example',
      'b.example'
    ])
    assert.equal(r.resolve('b.example').kind, 'registry')
    await r.close()
  })
})
