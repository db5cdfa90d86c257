import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { removeAgentDir, startAgent, type TestAgent } from '../../harness/agent.ts'
import { startContainerd, type TestContainerd } from '../../harness/containerd.ts'
import { buildTestImages, type PushedImages, pushTestImages } from '../../harness/images.ts'
import { startRegistry, type TestRegistry } from '../../harness/registry.ts'
import { podmanPullViaMirror, skopeoCopyViaMirror } from '../../harness/skopeo.ts'

// The Done-when of the foundation: real containerd, real skopeo and the real registry, with a
// real agent process in between.
describe('containerd and skopeo pull through the agent', () => {
  let registry: TestRegistry
  let containerd: TestContainerd
  let agent: TestAgent
  let pushed: PushedImages

  before(async () => {
    const images = await buildTestImages()
    registry = await startRegistry()
    pushed = await pushTestImages(registry.host, images)
    containerd = await startContainerd()
    agent = await startAgent({
      registries: { [registry.host]: { url: registry.url } },
      // podman and skopeo send no ?ns=: they reach this registry as the mirror's default.
      config: { mirror: { defaultRegistry: registry.host } }
    })
  })
  after(async () => {
    await agent?.stop()
    if (agent) await removeAgentDir(agent)
    await containerd?.stop()
    await registry?.stop()
  })

  it('ctr pulls and unpacks every test image through the mirror', async () => {
    for (const [name, image] of Object.entries(pushed)) {
      const r = await containerd.pull(image.ref, { mirrorHost: agent.mirror })
      assert.equal(r.code, 0, `${name}: ${r.stderr}`)
      const content = await containerd.contentDigests()
      for (const l of image.layers)
        assert.ok(content.includes(l.digest), `${name}: layer ${l.digest} missing`)
    }
    const status = await agent.status()
    // containerd never asks twice for content it holds: count each distinct layer once.
    const layers = new Map(
      Object.values(pushed).flatMap((i) => i.layers.map((l) => [l.digest, l.size] as const))
    )
    const total = [...layers.values()].reduce((n, s) => n + s, 0)
    // The layers came through the agent, not by falling back to the registry.
    assert.ok((status.bytes.served.mirror ?? 0) >= total * 0.99, JSON.stringify(status.bytes))
  })

  it('the registry sends each blob once when two clients pull the same image one after another', async () => {
    const image = pushed['multi:v2']
    assert.ok(image)
    // A fresh agent with an empty store, so every byte it needs comes from the registry.
    const fresh = await startAgent({
      registries: { [registry.host]: { url: registry.url } },
      config: { mirror: { defaultRegistry: registry.host } }
    })
    try {
      await containerd.removeAll()
      registry.resetCounters()
      const first = await containerd.pull(image.ref, { mirrorHost: fresh.mirror })
      assert.equal(first.code, 0, first.stderr)
      await containerd.removeAll()
      const second = await containerd.pull(image.ref, { mirrorHost: fresh.mirror })
      assert.equal(second.code, 0, second.stderr)
      const third = await skopeoCopyViaMirror({
        ref: image.ref,
        mirrorHost: fresh.mirror,
        registryHost: registry.host,
        destDir: `${fresh.dir}/skopeo-copy`
      })
      assert.equal(third.code, 0, third.stderr)
      for (const l of [image.config, ...image.layers]) {
        assert.equal(
          registry.bytesServed(l.digest),
          l.size,
          `registry sent ${l.digest} ${registry.bytesServed(l.digest)} bytes`
        )
      }
      // Three pulls: the agent served each layer three times from one registry transfer.
      const served = (await fresh.status()).bytes.served.mirror ?? 0
      const size = image.layers.reduce((n, l) => n + l.size, 0)
      assert.ok(served >= 3 * size, `served ${served} of ${3 * size}`)
    } finally {
      await fresh.stop()
      await removeAgentDir(fresh)
    }
  })

  it('skopeo copies through the mirror and every blob matches its digest', async () => {
    const image = pushed.random
    assert.ok(image)
    const before = (await agent.status()).bytes.served.mirror ?? 0
    const r = await skopeoCopyViaMirror({
      ref: image.ref,
      mirrorHost: agent.mirror,
      registryHost: registry.host,
      destDir: `${agent.dir}/skopeo-random`
    })
    assert.equal(r.code, 0, r.stderr)
    // random was pulled by containerd already: skopeo got it from the agent's store.
    const layer = image.layers[0]
    assert.ok(layer)
    assert.ok(((await agent.status()).bytes.served.mirror ?? 0) >= before + layer.size)
  })

  it('podman pulls through the mirror', async () => {
    const image = pushed.whiteout
    assert.ok(image)
    const before = (await agent.status()).bytes.served.mirror ?? 0
    const r = await podmanPullViaMirror({
      ref: image.ref,
      mirrorHost: agent.mirror,
      registryHost: registry.host
    })
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.digest, image.manifestDigest)
    // podman sends no ?ns=: the agent found the registry from its default or the path.
    assert.ok(((await agent.status()).bytes.served.mirror ?? 0) > before)
  })
})
