/**
 * Benchmark: how much the registry sends when several agents pull the same image, and how long
 * they take. N real agent processes on loopback share a swarm key; each pulls the ~110 MB test
 * image through its socket API.
 *   - staggered: one node pulls first, then the other N-1 at the same moment (a rollout after a
 *     canary): the registry should send the image about once.
 *   - flash crowd: N fresh nodes pull at the same moment, nobody holds anything yet.
 * Registry egress is counted per byte by a proxy in front of the real docker-registry.
 *
 *   npm run bench:swarm            # N=4
 *   NODES=6 npm run bench:swarm
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateSwarmKey } from '../../src/p2p/swarm-key.ts'
import type { TestAgent } from '../harness/agent.ts'
import { buildTestImages, type PushedImage, pushTestImages } from '../harness/images.ts'
import { startRegistry, type TestRegistry } from '../harness/registry.ts'
import { pull, startAgents, stopAgents } from './bench-agents.ts'
import { barChartSvg } from './chart.ts'

const NODES = Number(process.env.NODES ?? 4)
const IMAGE = process.env.IMAGE ?? 'multi:v1'

function egress(registry: TestRegistry, image: PushedImage): number {
  return image.layers.reduce((n, l) => n + registry.bytesServed(l.digest), 0)
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'sh-bench-'))
  const keyFile = join(dir, 'swarm.key')
  await writeFile(keyFile, generateSwarmKey(), { mode: 0o600 })
  process.stdout.write('building and pushing test images ...\n')
  const images = await buildTestImages()
  const registry = await startRegistry()
  const results: Record<string, { egressMultiple: number; medianPullMs: number; fromPeers: number }> = {}
  try {
    const image = (await pushTestImages(registry.host, images))[IMAGE]
    if (!image) throw new Error(`no test image ${IMAGE}`)
    const size = image.layers.reduce((n, l) => n + l.size, 0)
    process.stdout.write(`image ${image.ref}: ${(size / 1e6).toFixed(1)} MB of layers; ${NODES} agents\n`)

    for (const setting of ['staggered', 'flash crowd'] as const) {
      const agents = await startAgents(NODES, registry, { keyFile })
      try {
        registry.resetCounters()
        let crowd = agents
        if (setting === 'staggered') {
          const first = await pull(agents[0] as TestAgent, image.ref)
          process.stdout.write(`${setting}: first node ${first.ms.toFixed(0)} ms from the registry\n`)
          await new Promise((r) => setTimeout(r, 1000)) // its announcements land
          crowd = agents.slice(1)
        }
        const pulls = await Promise.all(crowd.map((a) => pull(a, image.ref)))
        const times = pulls.map((p) => p.ms).sort((a, b) => a - b)
        const peerBytes = pulls.reduce((n, p) => n + (p.bytes.peer ?? 0), 0)
        results[setting] = {
          egressMultiple: Number((egress(registry, image) / size).toFixed(2)),
          medianPullMs: Math.round(times[Math.floor(times.length / 2)] ?? 0),
          fromPeers: Number((peerBytes / (size * crowd.length)).toFixed(2))
        }
        process.stdout.write(
          `${setting}: registry sent ${results[setting].egressMultiple}x the image; ${crowd.length} concurrent pulls, median ${results[setting].medianPullMs} ms; ${(100 * results[setting].fromPeers).toFixed(0)} % of their bytes from peers\n`
        )
      } finally {
        await stopAgents(agents)
      }
    }
  } finally {
    await registry.stop()
    await rm(dir, { recursive: true, force: true })
  }
  const out = new URL('./results/', import.meta.url)
  await mkdir(out, { recursive: true })
  const summary = {
    benchmark: 'swarm-pull',
    command: 'npm run bench:swarm',
    nodes: NODES,
    image: IMAGE,
    date: new Date().toISOString(),
    results
  }
  await writeFile(new URL('swarm-pull.json', out), `${JSON.stringify(summary, null, 2)}\n`)
  await writeFile(
    new URL('swarm-pull.svg', out),
    await barChartSvg({
      title: `Registry egress when ${NODES} agents pull ${IMAGE} (multiples of the image; 1.0 is ideal)`,
      unit: 'x',
      groups: Object.entries(results).map(([name, r]) => ({
        name,
        bars: [{ label: 'registry egress', value: r.egressMultiple }]
      }))
    })
  )
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : err}\n`)
  process.exit(1)
})
