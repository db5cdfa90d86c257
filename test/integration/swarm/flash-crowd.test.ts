import assert from 'node:assert/strict'
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { streamAgent } from '../../../src/cli/socket-client.ts'
import { digestHex } from '../../../src/content/digest.ts'
import type { PullEvent } from '../../../src/fetch/image-puller.ts'
import { generateSwarmKey } from '../../../src/p2p/swarm-key.ts'
import { removeAgentDir, startAgent, type TestAgent } from '../../harness/agent.ts'
import { buildTestImages, type PushedImage, type PushedImages, pushTestImages } from '../../harness/images.ts'
import { startRegistry, type TestRegistry } from '../../harness/registry.ts'
import { startThrottleProxy, type ThrottleProxy } from '../../harness/throttle-proxy.ts'

const NODES = 8
// The registry's rate, shared by all its responses: slow enough that the swarm, not the
// registry, has to carry a crowd, and that a pull can be interrupted midway.
const REGISTRY_RATE = 10e6
// The registry egress the crowd must stay under, in multiples of the image: eight independent
// pulls cost 8. Decision 10 says how the crowd keeps to it.
const MAX_EGRESS = 1.2

type Done = PullEvent & { type: 'done' }

async function pull(agent: TestAgent, reference: string): Promise<Done> {
  let last: PullEvent | undefined
  for await (const e of streamAgent<PullEvent>(agent.socket, '/v1/pull', { reference })) last = e
  assert.ok(last && last.type === 'done', JSON.stringify(last))
  return last
}

function metric(text: string, name: string): number {
  let sum = 0
  for (const line of text.split('\n')) {
    if (line.startsWith(name)) sum += Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return sum
}

// Real agent processes on loopback: a cold swarm where everyone starts at once, a node serving
// corrupt pieces, and the first node dying mid-pull.
describe(`a flash crowd of ${NODES} agents`, { timeout: 300_000 }, () => {
  let dir: string
  let registry: TestRegistry
  let proxy: ThrottleProxy
  let pushed: PushedImages
  const agents: TestAgent[] = []

  const swarmAgent = async (bootstrap: string[]) => {
    const a = await startAgent({
      registries: { [registry.host]: { url: proxy.url } },
      config: {
        swarm: {
          enabled: true,
          listen: ['/ip4/127.0.0.1/tcp/0'],
          bootstrap,
          keyFile: join(dir, 'swarm.key')
        }
      }
    })
    agents.push(a)
    return a
  }

  const layerBytes = (image: PushedImage) => image.layers.reduce((n, l) => n + l.size, 0)

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sh-crowd-'))
    await writeFile(join(dir, 'swarm.key'), generateSwarmKey(), { mode: 0o600 })
    const images = await buildTestImages()
    registry = await startRegistry()
    pushed = await pushTestImages(registry.host, images)
    proxy = await startThrottleProxy(registry.url, REGISTRY_RATE)
    const first = await swarmAgent([])
    const bootstrap = (await first.status()).swarm?.addresses ?? []
    for (let i = 1; i < NODES; i++) await swarmAgent(bootstrap)
  })

  after(async () => {
    for (const a of agents) {
      await a.stop()
      await removeAgentDir(a)
    }
    await proxy?.stop()
    await registry?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('completes with the registry sending each blob a small multiple of once, peers sharing partial blobs', async (t) => {
    const image = pushed.random
    assert.ok(image)
    proxy.resetCounters()
    const results = await Promise.all(agents.map((a) => pull(a, image.ref)))
    const size = layerBytes(image)
    const sent = image.layers.reduce((n, l) => n + proxy.blobBytes(l.digest), 0)
    t.diagnostic(`registry egress ${(sent / size).toFixed(2)}x the image`)
    for (const l of image.layers) {
      const sent = proxy.blobBytes(l.digest)
      assert.ok(
        sent <= MAX_EGRESS * l.size,
        `the registry sent ${sent} bytes of ${l.digest} (${l.size} bytes)`
      )
    }
    // Every node holds every verified blob (a pull is done only once each blob passed its digest).
    for (const a of agents) {
      const s = await a.status()
      assert.equal(s.transfers.length, 0)
      assert.ok(s.store.completeBlobs >= image.layers.length + 1)
    }
    const fromPeers = results.reduce((n, r) => n + (r.bytes.peer ?? 0), 0)
    assert.ok(fromPeers >= (NODES - 2) * size, `peers supplied ${fromPeers} bytes`)
    // Pieces went from node to node before the serving node had the whole blob.
    let partial = 0
    for (const a of agents) partial += metric(await a.metrics(), 'shoal_partial_pieces_served_total')
    assert.ok(partial > 0, 'no piece of a partial blob was served')
  })

  it('with the registry refusing every blob, a newcomer pulls the image from its peers', async () => {
    const image = pushed.random
    assert.ok(image)
    const bootstrap = (await agents[0]!.status()).swarm?.addresses ?? []
    const newcomer = await swarmAgent(bootstrap)
    proxy.resetCounters()
    proxy.refuseBlobs(true)
    try {
      const done = await pull(newcomer, image.ref)
      assert.equal(done.totalBytes, layerBytes(image) + image.config.size)
      assert.ok((done.bytes.peer ?? 0) >= layerBytes(image), JSON.stringify(done.bytes))
    } finally {
      proxy.refuseBlobs(false)
    }
    for (const l of image.layers) assert.equal(proxy.blobBytes(l.digest), 0)
  })

  it('a node serving corrupt pieces is banned, and the node that met it still completes', async () => {
    const image = pushed.tiny
    assert.ok(image)
    const [rotten, victim] = agents as [TestAgent, TestAgent]
    await pull(rotten, image.ref)
    // Disk rot on the rotten node: its records still carry the true hashes, its bytes do not.
    for (const l of image.layers) {
      const fh = await open(join(rotten.storeDir, 'blobs', 'sha256', digestHex(l.digest)), 'r+')
      try {
        await fh.write(Buffer.from('rot'), 0, 3, Math.floor(l.size / 2))
      } finally {
        await fh.close()
      }
    }
    proxy.resetCounters()
    const done = await pull(victim, image.ref)
    assert.equal(done.totalBytes, layerBytes(image) + image.config.size)
    const m = await victim.metrics()
    assert.ok(metric(m, 'shoal_peer_bans_total{reason="bad-piece"}') >= 1, 'the victim banned nobody')
    assert.ok(metric(m, 'shoal_verify_failures_total{kind="piece"') >= 1)
    // The rotten piece (and whatever was not yet taken from the banned peer) came from the
    // registry, once at most: the good pieces it already gave passed their hashes.
    for (const l of image.layers) {
      const sent = proxy.blobBytes(l.digest)
      assert.ok(sent > 0 && sent <= l.size, `the registry sent ${sent} of ${l.size} bytes`)
    }
  })

  it('killing the first node mid-pull does not stop the others', async () => {
    const image = pushed['multi:v1']
    assert.ok(image)
    const [first, ...rest] = agents.slice(2) as [TestAgent, ...TestAgent[]]
    const firstPull = pull(first, image.ref).catch((err: unknown) => err)
    // The first node is well into the image (which takes about 11 s at the registry's rate)
    // when the others start, and dies soon after.
    await sleep(1000)
    const others = rest.map((a) => pull(a, image.ref))
    await sleep(700)
    await first.kill()
    agents.splice(agents.indexOf(first), 1)
    await removeAgentDir(first)
    await firstPull
    const results = await Promise.all(others)
    const total = layerBytes(image) + image.config.size
    for (const r of results) assert.equal(r.totalBytes, total, JSON.stringify(r))
    const fromPeers = results.reduce((n, r) => n + (r.bytes.peer ?? 0), 0)
    assert.ok(fromPeers > 0)
  })
})
