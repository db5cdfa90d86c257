import '../../../src/polyfill.ts'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { pino } from 'pino'
import { loadOrCreatePrivateKey } from '../../../src/p2p/identity.ts'
import { generateSwarmKey, parseSwarmKey } from '../../../src/p2p/swarm-key.ts'
import { mdnsServiceTag, SwarmNode, type SwarmNodeInit } from '../../../src/p2p/swarm-node.ts'

const logger = pino({ level: 'silent' })

async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000
): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!(await check())) {
    if (performance.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

// Real multicast: every node binds UDP 5353 and joins 224.0.0.251; the kernel loops the group's
// packets back to this host's sockets (IP_MULTICAST_LOOP), so nodes in one process find each
// other. Nothing may leave the host: the file runs itself again inside a network namespace of
// its own (only `lo`, with a multicast route on it), and the tests run there.
const IN_NETNS = process.env.SHOAL_MDNS_NETNS === '1'

if (!IN_NETNS) {
  it('mDNS tests pass inside a network namespace of their own', { timeout: 120_000 }, () => {
    const script =
      'ip link set lo up && ip route add 224.0.0.0/4 dev lo && exec node --import tsx --test "$0"'
    const r = spawnSync('unshare', ['--net', 'sh', '-c', script, fileURLToPath(import.meta.url)], {
      env: { ...process.env, SHOAL_MDNS_NETNS: '1', NODE_TEST_CONTEXT: undefined },
      encoding: 'utf8'
    })
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`)
    assert.match(r.stdout, /# pass [1-9]/)
    assert.match(r.stdout, /# fail 0/)
    assert.match(r.stdout, /# skipped 0/)
  })
}

if (IN_NETNS) {
  describe('mDNS discovery between real libp2p hosts', { timeout: 60_000 }, () => {
    let dir: string
    const swarmKey = parseSwarmKey(generateSwarmKey())
    // A tag of our own, so another test run or a Shoal on this LAN does not join in.
    const prefix = `/shoal-test-${randomBytes(4).toString('hex')}`
    const nodes: SwarmNode[] = []

    async function makeNode(name: string, init: Partial<SwarmNodeInit> = {}): Promise<SwarmNode> {
      const privateKey = await loadOrCreatePrivateKey(join(dir, `${name}.key`))
      const node = new SwarmNode(
        { logger },
        {
          listen: ['/ip4/127.0.0.1/tcp/0'],
          bootstrap: [],
          swarmKey,
          privateKey,
          protocolPrefix: prefix,
          mdns: true,
          ...init
        }
      )
      nodes.push(node)
      await node.start()
      return node
    }

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'shoal-mdns-'))
    })
    after(async () => {
      await Promise.all(nodes.map((n) => n.stop()))
      await rm(dir, { recursive: true, force: true })
    })

    it('derives the service tag from the protocol prefix', () => {
      assert.equal(mdnsServiceTag('/shoal'), '_shoal._udp.local')
      assert.equal(mdnsServiceTag('/Acme/Shoal_v2/'), '_acme-shoal-v2._udp.local')
      assert.equal(mdnsServiceTag('/'), '_shoal._udp.local')
    })

    it('connects nodes of one swarm without any bootstrap entry; refuses or ignores the others', async () => {
      const stranger = await makeNode('stranger', { swarmKey: parseSwarmKey(generateSwarmKey()) })
      const otherSwarm = await makeNode('other', { protocolPrefix: `${prefix}-other` })
      const a = await makeNode('a')
      const b = await makeNode('b')
      await waitFor('a and b to connect', () => a.peers().includes(b.peerId) && b.peers().includes(a.peerId))

      // The stranger (same tag, another swarm key) is found, so dialled, and refused.
      const found = (n: SwarmNode, peer: SwarmNode) => n.libp2p.peerStore.has(peer.libp2p.peerId)
      await waitFor('a to find the stranger by mDNS', () => found(a, stranger))
      await sleep(1000)
      assert.ok(!a.peers().includes(stranger.peerId))
      assert.ok(!b.peers().includes(stranger.peerId))
      assert.deepEqual(stranger.peers(), [])

      // A swarm with another prefix answers another tag: never found, never dialled.
      assert.ok(!(await found(a, otherSwarm)))
      assert.ok(!a.peers().includes(otherSwarm.peerId))
    })

    it('respects the allow-list', async () => {
      const [, , a, b] = nodes
      const picky = await makeNode('picky', { allowPeers: [a!.peerId] })
      await waitFor('picky to connect to a', () => picky.peers().includes(a!.peerId))
      await sleep(500)
      assert.deepEqual(picky.peers(), [a!.peerId])
      assert.ok(!b!.peers().includes(picky.peerId))
    })

    it('stop() closes the multicast sockets', async () => {
      await Promise.all(nodes.map((n) => n.stop()))
      await sleep(50)
      const udp = process.getActiveResourcesInfo().filter((r) => r.startsWith('UDP'))
      assert.deepEqual(udp, [])
    })
  })
}
