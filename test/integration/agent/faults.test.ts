import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { pino } from 'pino'
import { streamAgent } from '../../../src/cli/socket-client.ts'
import { systemClock } from '../../../src/clock.ts'
import type { PullEvent } from '../../../src/fetch/image-puller.ts'
import { LevelBlobStore } from '../../../src/store/level-blob-store.ts'
import { removeAgentDir, startAgent, type TestAgent } from '../../harness/agent.ts'
import { startContainerd, type TestContainerd } from '../../harness/containerd.ts'
import { buildTestImages, type PushedImages, pushTestImages } from '../../harness/images.ts'
import { startRegistry, type TestRegistry } from '../../harness/registry.ts'
import { startThrottleProxy, type ThrottleProxy } from '../../harness/throttle-proxy.ts'

async function pull(agent: TestAgent, reference: string): Promise<PullEvent[]> {
  const events: PullEvent[] = []
  for await (const e of streamAgent<PullEvent>(agent.socket, '/v1/pull', { reference })) events.push(e)
  return events
}

describe('faults: corrupt registry blobs, killed agents', () => {
  let registry: TestRegistry
  let proxy: ThrottleProxy
  let containerd: TestContainerd
  let pushed: PushedImages
  const agents: TestAgent[] = []

  before(async () => {
    const images = await buildTestImages()
    registry = await startRegistry()
    pushed = await pushTestImages(registry.host, images)
    proxy = await startThrottleProxy(registry.url, 0)
    containerd = await startContainerd()
  })
  after(async () => {
    for (const a of agents) {
      await a.stop()
      await removeAgentDir(a)
    }
    await containerd?.stop()
    await proxy?.stop()
    await registry?.stop()
  })

  it('a corrupted registry blob never reaches containerd', async () => {
    const image = pushed.whiteout
    assert.ok(image)
    const victim = image.layers.at(-1)
    assert.ok(victim)
    await registry.corruptBlob(victim.digest)
    const agent = await startAgent({ registries: { [registry.host]: { url: registry.url } } })
    agents.push(agent)
    // No fallback to the registry: only the agent can serve this pull.
    const r = await containerd.pull(image.ref, { mirrorHost: agent.mirror, fallback: false })
    assert.notEqual(r.code, 0, 'the pull of a corrupt image must fail')
    assert.ok(!(await containerd.contentDigests()).includes(victim.digest))
    assert.match(agent.logs(), /failed its digest check/)
    assert.match(await agent.metrics(), /shoal_verify_failures_total\{kind="blob"[^}]*\} [1-9]/)
    // Nothing of the corrupt blob is left in the agent's store either.
    await agent.stop()
    const store = new LevelBlobStore(
      { clock: systemClock, logger: pino({ level: 'silent' }) },
      { root: agent.storeDir, quotaBytes: 1 << 30 }
    )
    await store.start()
    try {
      assert.equal(await store.stat(victim.digest), undefined)
    } finally {
      await store.stop()
    }
  })

  it('a restarted agent resumes a half-fetched blob', async () => {
    const image = pushed.random
    assert.ok(image)
    const layer = image.layers[0]
    assert.ok(layer && layer.size > 16 * 1024 * 1024)
    const piece = 1024 * 1024
    const config = { store: { pieceSize: '1MiB' }, fetch: { registryConcurrency: 2 } }
    // Slow the registry down so the agent can be killed in the middle of the layer.
    proxy.setRate(8 * 1024 * 1024)
    const first = await startAgent({ registries: { [registry.host]: { url: proxy.url } }, config })
    agents.push(first)
    const pulling = pull(first, image.ref).catch(() => [])
    let held = 0
    for (let i = 0; i < 400 && held < 6; i++) {
      await new Promise((r) => setTimeout(r, 50))
      held = (await first.status()).transfers.find((t) => t.digest === layer.digest)?.piecesHeld ?? 0
    }
    assert.ok(held >= 6, `only ${held} pieces arrived`)
    await first.kill()
    await pulling
    const sentBefore = proxy.blobBytes(layer.digest)
    assert.ok(sentBefore < layer.size, 'the layer was complete before the kill')

    // Let the dead agent's in-flight responses drain through the proxy before counting anew.
    proxy.setRate(0)
    await new Promise((r) => setTimeout(r, 500))
    proxy.resetCounters()
    const second = await startAgent({
      storeDir: first.storeDir,
      registries: { [registry.host]: { url: proxy.url } },
      config
    })
    agents.push(second)
    const events = await pull(second, image.ref)
    const done = events.at(-1)
    assert.ok(done && done.type === 'done', JSON.stringify(done))
    // Only the missing pieces came from the registry the second time.
    const again = proxy.blobBytes(layer.digest)
    assert.ok(again <= layer.size - held * piece, `refetched ${again} of ${layer.size} bytes`)
    assert.ok((done.bytes.local ?? 0) >= held * piece)
  })
})
