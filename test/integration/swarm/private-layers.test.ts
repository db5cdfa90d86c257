import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { generateSwarmKey } from '../../../src/p2p/swarm-key.ts'
import {
  lastPullEvent,
  pullDone,
  removeAgentDir,
  startAgent,
  type TestAgent,
  until
} from '../../harness/agent.ts'
import { buildTestImages, type PushedImage, pushTestImages } from '../../harness/images.ts'
import { REGISTRY_PASSWORD, REGISTRY_USER, startRegistry, type TestRegistry } from '../../harness/registry.ts'

/** The sum of a counter's samples with `label` in a Prometheus text exposition. */
function counter(text: string, name: string, label: string): number {
  let sum = 0
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) && line.includes(label)) sum += Number(line.split(' ').at(-1))
  }
  return sum
}

// Real agents and a real registry that requires basic auth (htpasswd): what a private
// repository looks like. Decision 11: its layers go only to peers that show they read its manifest.
describe('private layers in a swarm', { timeout: 240_000 }, () => {
  let dir: string
  let registry: TestRegistry
  let image: PushedImage
  let ref: string
  const agents: TestAgent[] = []
  let first: TestAgent

  const swarmAgent = async (bootstrap: string[], credentials: boolean) => {
    const a = await startAgent({
      registries: {
        [registry.host]: {
          url: registry.url,
          ...(credentials && { username: REGISTRY_USER, password: REGISTRY_PASSWORD })
        }
      },
      config: {
        swarm: {
          enabled: true,
          listen: ['/ip4/127.0.0.1/tcp/0'],
          bootstrap,
          keyFile: join(dir, 'swarm.key'),
          findTimeout: '3s'
        }
      }
    })
    agents.push(a)
    return a
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sh-private-'))
    await writeFile(join(dir, 'swarm.key'), generateSwarmKey(), { mode: 0o600 })
    // Pushed without auth, then served from the same storage by a registry that requires it.
    const dataDir = join(dir, 'registry')
    const images = await buildTestImages()
    const open = await startRegistry({ dataDir })
    const pushed = await pushTestImages(open.host, images)
    await open.stop()
    registry = await startRegistry({ dataDir, htpasswd: true })
    // An index: the layers' access key is the platform manifest's.
    const multiarch = pushed.multiarch
    assert.ok(multiarch)
    image = multiarch
    ref = `${registry.host}/${image.repository}:${image.tag}`
    first = await swarmAgent([], true)
  })
  after(async () => {
    for (const a of agents) {
      await a.stop()
      await removeAgentDir(a)
    }
    await registry?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('an agent with credentials takes the private layers from another one, not from the registry', async () => {
    const anonymous = await fetch(`${registry.url}/v2/${image.repository}/manifests/${image.tag}`)
    assert.equal(anonymous.status, 401, 'the registry must require credentials')
    const bootstrap = (await first.status()).swarm?.addresses ?? []
    const second = await swarmAgent(bootstrap, true)
    const done = await pullDone(first, ref)
    assert.ok((done.bytes.registry ?? 0) > 0)
    const blobs = image.layers.length + 1
    await until(
      'the first agent announced every blob (under rendezvous keys)',
      async () => ((await first.status()).swarm?.announced ?? 0) >= blobs
    )
    registry.resetCounters()
    const shared = await pullDone(second, ref)
    const layerBytes = image.layers.reduce((n, l) => n + l.size, 0)
    assert.ok((shared.bytes.peer ?? 0) >= layerBytes, JSON.stringify(shared.bytes))
    for (const l of image.layers) assert.equal(registry.bytesServed(l.digest), 0, `registry sent ${l.digest}`)
    assert.equal(counter(await first.metrics(), 'shoal_peer_access_denied_total', 'reason'), 0)
  })

  it('an agent without credentials in the same swarm gets no private layer from its peers', async () => {
    const bootstrap = (await first.status()).swarm?.addresses ?? []
    const outsider = await swarmAgent(bootstrap, false)
    await until(
      'the outsider joined the swarm',
      async () => ((await outsider.status()).swarm?.peers ?? 0) >= 2
    )
    // It cannot read the manifest, so it cannot pull the image at all...
    const refused = await lastPullEvent(outsider, ref)
    assert.ok(refused.type === 'error' && refused.code === 'UPSTREAM_UNAUTHORIZED', JSON.stringify(refused))
    // ...and asking for a layer by its digest (digests leak: logs, CI output) gets it nowhere.
    const layer = image.layers[0]
    assert.ok(layer)
    const res = await fetch(
      `http://${outsider.mirror}/v2/${image.repository}/blobs/${layer.digest}?ns=${registry.host}`
    )
    const body = (await res.json()) as { errors: { detail: { code: string } }[] }
    assert.equal(res.status, 502)
    assert.equal(body.errors[0]?.detail.code, 'UPSTREAM_UNAUTHORIZED')
    const st = await outsider.status()
    assert.equal(st.bytes.fetched.peer ?? 0, 0, JSON.stringify(st.bytes))
    assert.equal(st.store.completeBlobs, 0)
    // The peers it asked refused it, and counted the refusal.
    let refusals = 0
    for (const a of agents.slice(0, 2)) {
      refusals += counter(await a.metrics(), 'shoal_peer_access_denied_total', 'reason="no-proof"')
    }
    assert.ok(refusals > 0, 'no peer refused the outsider: the test did not exercise the swarm')
  })
})
