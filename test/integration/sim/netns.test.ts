import '../../../src/polyfill.ts'
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { leftovers, removeRun } from '../../../src/sim/netns/cleanup.ts'
import { Iproute } from '../../../src/sim/netns/iproute.ts'
import { newRunPrefix, runNames } from '../../../src/sim/netns/names.ts'
import { netemWorks, shapeEgress } from '../../../src/sim/netns/tc.ts'
import { generateImage, layerSizes } from '../../../src/sim/protocol/image.ts'
import { runProtocolScenario } from '../../../src/sim/protocol/runner.ts'
import { parseScenario } from '../../../src/sim/scenario.ts'
import { processAlive } from '../../harness/agent.ts'

const IS_ROOT = process.getuid?.() === 0
const MiB = 2 ** 20
const F = 2 * MiB
/** Each node's download: low enough that F / DOWNLOAD (4 s) dominates every pull. */
const DOWNLOAD = MiB / 2

const tiny = parseScenario({
  name: 'netns-tiny',
  seed: 7,
  topology: { nodes: 3, upload: MiB, download: DOWNLOAD, registryUpload: 2 * MiB },
  image: { size: F, pieceSize: 256 * 1024 }
})

describe('protocol level: real agents in network namespaces', {
  skip: IS_ROOT ? false : 'needs root'
}, () => {
  const iproute = new Iproute()

  it('says whether netem works here, and refuses a latency with a typed error when it does not', async (t) => {
    const names = runNames(newRunPrefix())
    try {
      await iproute.addNetns(names.hub)
      const works = await netemWorks(iproute, names.hub)
      t.diagnostic(`netem (sch_netem) ${works ? 'works' : 'is not available'} in this kernel`)
      if (!works) {
        await assert.rejects(shapeEgress(iproute, names.hub, 'lo', { rate: MiB, delayMs: 10 }), {
          code: 'NETEM_UNAVAILABLE'
        })
      }
    } finally {
      await removeRun(iproute, names.prefix)
    }
  })

  it('pulls the image on every node through shaped links and removes everything it made', async () => {
    const prefix = newRunPrefix()
    let pids: number[] = []
    const r = await runProtocolScenario(tiny, {
      prefix,
      build: 'source',
      timeoutMs: 50_000,
      onAgentsReady: (run) => {
        pids = run.pids
      }
    })
    assert.equal(r.manifestDigest, generateImage(layerSizes(F), tiny.seed).manifest.digest)
    assert.equal(r.completion.length, 3)
    for (const [i, t] of r.completion.entries()) {
      // tc, not the agent, limits: no pull beats the download link (its bucket's burst aside).
      assert.ok(t >= (0.95 * F) / DOWNLOAD, `node ${i} done in ${t} s, faster than its link allows`)
    }
    assert.ok(r.registryEgress >= F, `registry link counted ${r.registryEgress} bytes`)
    assert.ok(r.registryBlobBytes >= F, `registry log counted ${r.registryBlobBytes} blob bytes`)
    assert.ok(r.downloaded.every((d) => d >= F))
    assert.ok(r.timeline.t.length >= 2)
    assert.equal(r.timeline.completed.at(-1), 3)
    assert.deepEqual(await leftovers(iproute, prefix), [])
    assert.deepEqual(pids.filter(processAlive), [])
  })

  it('removes everything it made when an agent dies in the middle of the pulls', async () => {
    const prefix = newRunPrefix()
    let pids: number[] = []
    await assert.rejects(
      runProtocolScenario(tiny, {
        prefix,
        build: 'source',
        timeoutMs: 50_000,
        onAgentsReady: (run) => {
          pids = run.pids
          // pids: the registry first, then the agents.
          setTimeout(() => process.kill(run.pids[2] as number, 'SIGKILL'), 1500)
        }
      })
    )
    assert.equal(pids.length, 4)
    assert.deepEqual(await leftovers(iproute, prefix), [])
    assert.deepEqual(pids.filter(processAlive), [])
  })
})
