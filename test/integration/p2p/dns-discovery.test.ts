import '../../../src/polyfill.ts'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { pino } from 'pino'
import type { DnsResolver } from '../../../src/p2p/dns-discovery.ts'
import { loadOrCreatePrivateKey } from '../../../src/p2p/identity.ts'
import { generateSwarmKey, parseSwarmKey } from '../../../src/p2p/swarm-key.ts'
import { SwarmNode, type SwarmNodeInit } from '../../../src/p2p/swarm-node.ts'

const logger = pino({ level: 'silent' })

async function waitFor(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!check()) {
    if (performance.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

describe('DNS discovery between real libp2p hosts on loopback', { timeout: 30_000 }, () => {
  let dir: string
  const swarmKey = parseSwarmKey(generateSwarmKey())
  const nodes: SwarmNode[] = []

  async function makeNode(name: string, init: Partial<SwarmNodeInit>, resolver?: DnsResolver) {
    const privateKey = await loadOrCreatePrivateKey(join(dir, `${name}.key`))
    const node = new SwarmNode(
      { logger, ...(resolver && { dnsResolver: resolver }) },
      { listen: [], bootstrap: [], swarmKey, privateKey, ...init }
    )
    nodes.push(node)
    await node.start()
    return node
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-dns-'))
  })
  after(async () => {
    await Promise.all(nodes.map((n) => n.stop()))
    await rm(dir, { recursive: true, force: true })
  })

  it('connects nodes that share a name and a port (no bootstrap entry), never one without the swarm key', async () => {
    // Like pods behind a headless service: one port, one address each (127.0.0.x on loopback).
    const a = await makeNode('a', { listen: ['/ip4/127.0.0.1/tcp/0'] })
    const port = Number(a.addresses()[0]!.split('/')[4])
    const stranger = await makeNode('stranger', {
      listen: [`/ip4/127.0.0.2/tcp/${port}`],
      swarmKey: parseSwarmKey(generateSwarmKey())
    })
    let lookups = 0
    const resolver: DnsResolver = {
      resolve: async (name) => {
        lookups++
        assert.equal(name, 'shoal.default.svc.cluster.local')
        return ['127.0.0.1', '127.0.0.2', '127.0.0.3', '127.0.0.4']
      }
    }
    // A dial to a node with another swarm key can hang until the dial timeout: keep rounds short.
    const dnsDiscovery = {
      name: 'shoal.default.svc.cluster.local',
      port,
      intervalMs: 300,
      dialTimeoutMs: 1000
    }
    // b's own address (127.0.0.3) is among the answers; nothing listens on 127.0.0.4.
    const b = await makeNode('b', { listen: [`/ip4/127.0.0.3/tcp/${port}`], dnsDiscovery }, resolver)
    await waitFor('b to connect to a', () => b.peers().includes(a.peerId))
    await waitFor('a to see b', () => a.peers().includes(b.peerId))

    // Several rounds later: still one connection between them, nothing from the stranger, and b
    // never dialled itself.
    await waitFor('three more look-ups', () => lookups >= 4)
    assert.equal(b.libp2p.getConnections(a.libp2p.peerId).length, 1)
    assert.deepEqual(b.peers(), [a.peerId])
    assert.deepEqual(stranger.peers(), [])
    assert.deepEqual(a.peers(), [b.peerId])
  })

  it('nodes that all run discovery keep one connection per pair (two after a crossed dial), no more', async () => {
    const [a, , b] = nodes
    const port = Number(a!.addresses()[0]!.split('/')[4])
    const lookups = [0, 0]
    const resolver = (k: number): DnsResolver => ({
      resolve: async () => {
        lookups[k]!++
        return ['127.0.0.1', '127.0.0.3', '127.0.0.5', '127.0.0.6']
      }
    })
    const dnsDiscovery = { name: 'x', port, intervalMs: 200 }
    const [c, d] = await Promise.all(
      ['5', '6'].map((x, k) =>
        makeNode(`c${x}`, { listen: [`/ip4/127.0.0.${x}/tcp/${port}`], dnsDiscovery }, resolver(k))
      )
    )
    const all = [a!, b!, c!, d!]
    await waitFor('a full mesh', () => all.every((n) => n.peers().length === 3))
    // A round waits for its dials: once each loop has begun a second round after the mesh, one
    // whole round has run with every peer connected, and no dial is in flight.
    const meshed = [...lookups]
    await waitFor('a whole round each', () => lookups.every((n, k) => n >= meshed[k]! + 2))
    const counts = () => all.map((n) => all.map((p) => n.libp2p.getConnections(p.libp2p.peerId).length))
    const first = counts()
    // Two nodes that dial each other in the same instant may both keep their connection.
    for (const [i, row] of first.entries()) {
      for (const [j, count] of row.entries()) assert.ok(i === j ? count === 0 : count === 1 || count === 2)
    }
    // Later rounds find connected peers (by the id learned, or by identify) and dial nobody.
    const before = [...lookups]
    await waitFor('three more rounds each', () => lookups.every((n, k) => n >= before[k]! + 3))
    assert.deepEqual(counts(), first)
    // What identify told c about d's listen address, which spares c a dial of a connected peer.
    assert.equal(await c!.connectedPeerAt(`/ip4/127.0.0.6/tcp/${port}`), d!.peerId)
    assert.equal(await c!.connectedPeerAt(`/ip4/127.0.0.9/tcp/${port}`), undefined)

    await Promise.all([c!.stop(), d!.stop()])
    const stopped = [...lookups]
    await sleep(500)
    assert.deepEqual(lookups, stopped)
  })
})
