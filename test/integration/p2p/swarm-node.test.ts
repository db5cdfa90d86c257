import '../../../src/polyfill.ts'
import assert from 'node:assert/strict'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { pino } from 'pino'
import { digestOf } from '../../../src/content/digest.ts'
import { DhtContentRouting } from '../../../src/p2p/content-routing.ts'
import { loadOrCreatePrivateKey } from '../../../src/p2p/identity.ts'
import { generateSwarmKey, parseSwarmKey } from '../../../src/p2p/swarm-key.ts'
import { SwarmNode, type SwarmNodeInit } from '../../../src/p2p/swarm-node.ts'

const logger = pino({ level: 'silent' })
const LISTEN = ['/ip4/127.0.0.1/tcp/0']

async function waitFor(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!check()) {
    if (performance.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

describe('SwarmNode and DhtContentRouting on loopback', { timeout: 60_000 }, () => {
  let dir: string
  const swarmKey = parseSwarmKey(generateSwarmKey())
  const nodes: SwarmNode[] = []
  const extra: SwarmNode[] = []

  async function makeNode(name: string, init: Partial<SwarmNodeInit> = {}): Promise<SwarmNode> {
    const privateKey = await loadOrCreatePrivateKey(join(dir, `${name}.key`))
    const node = new SwarmNode({ logger }, { listen: LISTEN, bootstrap: [], swarmKey, privateKey, ...init })
    await node.start()
    return node
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-swarm-'))
    nodes.push(await makeNode('n0'))
    const seed = nodes[0]!.addresses()
    for (let i = 1; i < 4; i++) nodes.push(await makeNode(`n${i}`, { bootstrap: seed }))
    await waitFor('every node to join node 0', () => nodes[0]!.peers().length >= 3)
  })

  after(async () => {
    await Promise.all([...nodes, ...extra].map((n) => n.stop()))
    await rm(dir, { recursive: true, force: true })
  })

  it('has a peer id before start, addresses ending in /p2p/<id>, and a 0600 key file', async () => {
    const n0 = nodes[0]!
    assert.match(n0.peerId, /^12D3KooW/)
    assert.ok(n0.addresses().length > 0)
    for (const a of n0.addresses()) assert.ok(a.endsWith(`/p2p/${n0.peerId}`), a)
    assert.equal((await stat(join(dir, 'n0.key'))).mode & 0o777, 0o600)
  })

  it('node 3 finds node 2 as a provider of a blob with dialable addresses', async () => {
    const digest = digestOf(new TextEncoder().encode('a layer'))
    const r2 = new DhtContentRouting({ node: nodes[2]!, logger })
    const r3 = new DhtContentRouting({ node: nodes[3]!, logger })
    assert.equal(r2.blobKey(digest).toString(), r3.blobKey(digest).toString())
    assert.equal(r2.blobKey(digest).version, 1)
    assert.equal(r2.blobKey(digest).code, 0x55)

    const accepted = await r2.provide(digest)
    assert.ok(accepted >= 1, `provide reached ${accepted} peers`)

    const providers = await r3.findProviders(digest, { limit: 1, timeoutMs: 5000 })
    assert.equal(providers.length, 1)
    const [p] = providers
    assert.equal(p!.peerId, nodes[2]!.peerId)
    assert.ok(p!.addresses.length > 0)
    for (const a of p!.addresses) assert.ok(a.endsWith(`/p2p/${nodes[2]!.peerId}`), a)
    // The address works from a node that may have no connection to node 2 yet.
    assert.equal(await nodes[1]!.dial(p!.addresses[0]!), nodes[2]!.peerId)

    // The provider itself is never among its own results.
    const fromSelf = await r2.findProviders(digest, { timeoutMs: 2000 })
    assert.ok(!fromSelf.some((x) => x.peerId === nodes[2]!.peerId))

    // An unknown blob: nobody, and the lookup ends (by itself or at its deadline).
    const none = await r3.findProviders(digestOf(new TextEncoder().encode('nobody has this')), {
      timeoutMs: 3000
    })
    assert.deepEqual(none, [])
  })

  it('bounds provide concurrency and counts each provide', async () => {
    const r1 = new DhtContentRouting({ node: nodes[1]!, logger }, { provideConcurrency: 3 })
    const digests = Array.from({ length: 12 }, (_, i) => digestOf(new TextEncoder().encode(`blob ${i}`)))
    const pending = digests.map((d) => r1.provide(d))
    assert.equal(r1.pendingProvides, 9)
    const counts = await Promise.all(pending)
    for (const c of counts) assert.ok(c >= 1)
    const r0 = new DhtContentRouting({ node: nodes[0]!, logger })
    const found = await r0.findProviders(digests[11]!, { limit: 1, timeoutMs: 5000 })
    assert.deepEqual(
      found.map((p) => p.peerId),
      [nodes[1]!.peerId]
    )
    // Withdrawn: node 1 no longer lists itself locally (others' copies simply expire).
    await r1.stopProviding(digests[11]!)
  })

  it('an aborted lookup rejects with ABORTED', async () => {
    const r3 = new DhtContentRouting({ node: nodes[3]!, logger })
    const controller = new AbortController()
    controller.abort()
    await assert.rejects(r3.findProviders(digestOf(new Uint8Array([1])), { signal: controller.signal }), {
      code: 'ABORTED'
    })
    await assert.rejects(r3.provide(digestOf(new Uint8Array([1])), { signal: controller.signal }), {
      code: 'ABORTED'
    })
    await assert.rejects(r3.findProviders('sha256:nope'), { code: 'INVALID_DIGEST' })
  })

  it('a node with a different swarm key cannot connect either way', async () => {
    const stranger = await makeNode('stranger', { swarmKey: parseSwarmKey(generateSwarmKey()) })
    extra.push(stranger)
    // The mismatch shows as EncryptionFailedError: at once (ECONNRESET) or, when the garbled Noise
    // length prefix leaves one side waiting for bytes, only at the dial timeout (6 s): bound it.
    const quick = () => ({ signal: AbortSignal.timeout(1500) })
    await assert.rejects(stranger.dial(nodes[0]!.addresses()[0]!, quick()))
    await assert.rejects(nodes[1]!.dial(stranger.addresses()[0]!, quick()))
    await sleep(200)
    for (const n of nodes) assert.ok(!n.peers().includes(stranger.peerId))
    assert.deepEqual(stranger.peers(), [])
  })

  it('an allow-list denies unlisted peers, inbound and outbound', async () => {
    const picky = await makeNode('picky', { allowPeers: [nodes[0]!.peerId] })
    extra.push(picky)
    assert.equal(await picky.dial(nodes[0]!.addresses()[0]!), nodes[0]!.peerId)
    await assert.rejects(picky.dial(nodes[1]!.addresses()[0]!))
    await nodes[2]!.dial(picky.addresses()[0]!).then(
      () => {},
      () => {}
    )
    await sleep(200)
    assert.deepEqual(picky.peers(), [nodes[0]!.peerId])
    assert.ok(!nodes[1]!.peers().includes(picky.peerId))
    assert.ok(!nodes[2]!.peers().includes(picky.peerId))
  })

  it("a connection outlives libp2p's heartbeat while another ping stream is open", async () => {
    // The connection monitor pings every connection every 10 s and aborts it when the ping
    // cannot open a stream; a ping stream already open (a DHT check, a user's ping) used to make
    // it fail, and every piece session on the connection died.
    const a = await makeNode('heartbeat-a')
    const b = await makeNode('heartbeat-b')
    extra.push(a, b)
    await b.dial(a.addresses()[0]!)
    const held = await b.libp2p.dialProtocol(a.libp2p.peerId, '/ipfs/ping/1.0.0')
    const [conn] = b.libp2p.getConnections(a.libp2p.peerId)
    assert.ok(conn)
    await sleep(11_000)
    assert.equal(conn.status, 'open')
    assert.deepEqual(b.peers(), [a.peerId])
    held.abort(new Error('done'))
  })

  it('a restarted node keeps its peer id (same key file) and its datastore', async () => {
    const datastorePath = join(dir, 'restart-data')
    const first = await makeNode('restart', { datastorePath, bootstrap: nodes[0]!.addresses() })
    const id = first.peerId
    await waitFor('the restarted node to join', () => first.peers().includes(nodes[0]!.peerId))
    const digest = digestOf(new TextEncoder().encode('kept across restarts'))
    await new DhtContentRouting({ node: first, logger }).provide(digest)
    await first.stop()
    await first.stop()

    const second = await makeNode('restart', { datastorePath })
    extra.push(second)
    assert.equal(second.peerId, id)
    assert.equal(second.libp2p.peerId.toString(), id)
    // Peers learned before the restart come back from the datastore.
    const known = await second.libp2p.peerStore.all()
    assert.ok(known.some((p) => p.id.toString() === nodes[0]!.peerId))
  })

  it('stop() releases every socket', async () => {
    await Promise.all([...nodes, ...extra].map((n) => n.stop()))
    await Promise.all([...nodes, ...extra].map((n) => n.stop()))
    assert.equal(nodes[0]!.started, false)
    assert.throws(() => nodes[0]!.libp2p, { code: 'INTERNAL' })
    assert.deepEqual(nodes[0]!.peers(), [])
    await sleep(50)
    const sockets = process.getActiveResourcesInfo().filter((r) => r.startsWith('TCP'))
    assert.deepEqual(sockets, [])
  })
})
