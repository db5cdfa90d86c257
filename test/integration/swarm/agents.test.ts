import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { generateSwarmKey } from '../../../src/p2p/swarm-key.ts'
import { pullDone, removeAgentDir, startAgent, type TestAgent, until } from '../../harness/agent.ts'
import { startContainerd, type TestContainerd } from '../../harness/containerd.ts'
import { buildTestImages, type PushedImages, pushTestImages } from '../../harness/images.ts'
import { startRegistry, type TestRegistry } from '../../harness/registry.ts'

// Real agent processes on loopback forming a swarm: a private DHT over libp2p with a swarm key.
describe('agents share layers through the swarm', () => {
  let dir: string
  let registry: TestRegistry
  let pushed: PushedImages
  let containerd: TestContainerd
  const agents: TestAgent[] = []
  let seed: TestAgent

  const swarmAgent = async (keyFile: string, bootstrap: string[]) => {
    const a = await startAgent({
      registries: { [registry.host]: { url: registry.url } },
      config: {
        swarm: { enabled: true, listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap, keyFile, findTimeout: '3s' }
      }
    })
    agents.push(a)
    return a
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sh-swarm-'))
    await writeFile(join(dir, 'swarm.key'), generateSwarmKey(), { mode: 0o600 })
    await writeFile(join(dir, 'other.key'), generateSwarmKey(), { mode: 0o600 })
    const images = await buildTestImages()
    registry = await startRegistry()
    pushed = await pushTestImages(registry.host, images)
    containerd = await startContainerd()
    seed = await swarmAgent(join(dir, 'swarm.key'), [])
  })
  after(async () => {
    for (const a of agents) {
      await a.stop()
      await removeAgentDir(a)
    }
    await containerd?.stop()
    await registry?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('a second and a third node take the layers from the first, not the registry', async () => {
    const image = pushed['multi:v1']
    assert.ok(image)
    const bootstrap = (await seed.status()).swarm?.addresses ?? []
    assert.ok(bootstrap.length > 0)
    const b = await swarmAgent(join(dir, 'swarm.key'), bootstrap)
    const c = await swarmAgent(join(dir, 'swarm.key'), bootstrap)

    const first = await pullDone(seed, image.ref)
    assert.ok((first.bytes.registry ?? 0) > 0)
    const blobs = image.layers.length + 1
    await until(
      'the seed announced every blob',
      async () => ((await seed.status()).swarm?.announced ?? 0) >= blobs
    )
    registry.resetCounters()

    const second = await pullDone(b, image.ref)
    const layerBytes = image.layers.reduce((n, l) => n + l.size, 0)
    assert.ok((second.bytes.peer ?? 0) >= layerBytes, JSON.stringify(second.bytes))
    for (const l of image.layers) assert.equal(registry.bytesServed(l.digest), 0, `registry sent ${l.digest}`)

    // The third node serves containerd through its mirror, again from the swarm.
    const r = await containerd.pull(image.ref, { mirrorHost: c.mirror })
    assert.equal(r.code, 0, r.stderr)
    for (const l of image.layers) assert.equal(registry.bytesServed(l.digest), 0, `registry sent ${l.digest}`)
    // The seed counted what it served to its peers.
    assert.match(await seed.metrics(), /shoal_served_bytes_total\{interface="peer"\} [1-9]/)
    const cs = await c.status()
    assert.ok((cs.bytes.fetched.peer ?? 0) >= layerBytes, JSON.stringify(cs.bytes))
  })

  it('a node with another swarm key cannot join and pulls from the registry', async () => {
    const image = pushed.random
    assert.ok(image)
    await pullDone(seed, image.ref)
    const bootstrap = (await seed.status()).swarm?.addresses ?? []
    const outsider = await swarmAgent(join(dir, 'other.key'), bootstrap)
    registry.resetCounters()
    const done = await pullDone(outsider, image.ref)
    assert.equal(done.bytes.peer ?? 0, 0)
    const layer = image.layers[0]
    assert.ok(layer)
    assert.equal(registry.bytesServed(layer.digest), layer.size)
    assert.equal((await outsider.status()).swarm?.peers, 0)
  })
})
