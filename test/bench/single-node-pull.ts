/**
 * Benchmark: a cold pull by containerd of the ~100 MB test image, direct from the registry and
 * through a fresh agent's mirror, alternating, several rounds. Prints the speed ratio
 * (direct time / agent time; above 1 means the agent is faster) and the agent's peak RSS.
 * Both sides are measured in the same run on the same machine, so the ratio is what counts.
 *
 *   npm run bench                  # builds dist/, then 5 rounds with the compiled agent
 *   ROUNDS=9 npm run bench
 *
 * Writes the figures to test/bench/results/single-node-pull.json.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { removeAgentDir, startAgent } from '../harness/agent.ts'
import { startContainerd } from '../harness/containerd.ts'
import { buildTestImages, pushTestImages } from '../harness/images.ts'
import { startRegistry } from '../harness/registry.ts'

const ROUNDS = Number(process.env.ROUNDS ?? 5)
const IMAGE = process.env.IMAGE ?? 'multi:v1'

async function peakRssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const kb = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? Number.NaN)
  return kb * 1024
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2
}

const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`

async function main(): Promise<void> {
  process.stdout.write(`building and pushing test images ...\n`)
  const images = await buildTestImages()
  const registry = await startRegistry()
  const containerd = await startContainerd()
  const results: { round: number; directMs: number; agentMs: number; rssBytes: number }[] = []
  try {
    const pushed = await pushTestImages(registry.host, images)
    const image = pushed[IMAGE]
    if (!image) throw new Error(`no test image ${IMAGE}`)
    const total = image.layers.reduce((n, l) => n + l.size, 0)
    process.stdout.write(
      `image ${image.ref}: ${image.layers.length} layers, ${mb(total)}; ${ROUNDS} rounds\n`
    )
    for (let round = 1; round <= ROUNDS; round++) {
      await containerd.removeAll()
      const direct = await containerd.pull(image.ref)
      if (direct.code !== 0) throw new Error(`direct pull failed: ${direct.stderr}`)

      await containerd.removeAll()
      const agent = await startAgent({ registries: { [registry.host]: { url: registry.url } }, built: true })
      try {
        const via = await containerd.pull(image.ref, { mirrorHost: agent.mirror })
        if (via.code !== 0) throw new Error(`pull through the agent failed: ${via.stderr}`)
        const status = await agent.status()
        // The pull must really have gone through the agent, not fallen back to the registry.
        if ((status.bytes.served.mirror ?? 0) < total) {
          throw new Error(`the agent served only ${status.bytes.served.mirror ?? 0} of ${total} bytes`)
        }
        const rssBytes = await peakRssBytes(agent.pid)
        results.push({ round, directMs: direct.durationMs, agentMs: via.durationMs, rssBytes })
        process.stdout.write(
          `round ${round}/${ROUNDS}: direct ${direct.durationMs.toFixed(0)} ms, agent ${via.durationMs.toFixed(0)} ms, ratio ${(direct.durationMs / via.durationMs).toFixed(2)}, agent peak RSS ${mb(rssBytes)}\n`
        )
      } finally {
        await agent.stop()
        await removeAgentDir(agent)
      }
    }
  } finally {
    await containerd.stop()
    await registry.stop()
  }
  const ratio = median(results.map((r) => r.directMs / r.agentMs))
  const rss = Math.max(...results.map((r) => r.rssBytes))
  const summary = {
    benchmark: 'single-node-pull',
    image: IMAGE,
    rounds: ROUNDS,
    medianRatio: Number(ratio.toFixed(3)),
    medianDirectMs: Math.round(median(results.map((r) => r.directMs))),
    medianAgentMs: Math.round(median(results.map((r) => r.agentMs))),
    peakRssMB: Number((rss / 1e6).toFixed(1)),
    goal: { ratio: '>= 0.9', rssMB: '< 200' },
    date: new Date().toISOString(),
    results
  }
  await mkdir(new URL('./results/', import.meta.url), { recursive: true })
  await writeFile(
    new URL('./results/single-node-pull.json', import.meta.url),
    `${JSON.stringify(summary, null, 2)}\n`
  )
  process.stdout.write(
    `\nspeed ratio (direct / agent, median of ${ROUNDS}): ${ratio.toFixed(2)}   goal >= 0.9\n` +
      `agent peak RSS (max): ${mb(rss)}   goal < 200 MB\n`
  )
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : err}\n`)
  process.exit(1)
})
