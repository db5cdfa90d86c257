/**
 * Benchmark: a cold pull by containerd of the ~110 MB test image, direct from the registry and
 * through a fresh agent's mirror, alternating, several rounds, in two settings:
 *   - loopback: the registry on this machine, as fast as the disk (the agent's worst case:
 *     it must fetch and verify a blob before it serves it, so it can only add time);
 *   - capped: the same registry behind a proxy that caps every connection (like registries
 *     and CDNs that throttle each stream), where the agent's parallel Range requests pay.
 * Prints the speed ratio (direct time / agent time; above 1 means the agent is faster) and
 * the agent's peak RSS. Both sides are measured in the same run on the same machine.
 *
 *   npm run bench                          # builds dist/, then 5 rounds per setting
 *   ROUNDS=9 CAP_MBPS=25 npm run bench
 *
 * Writes the figures to test/bench/results/single-node-pull.json and a chart beside it.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { removeAgentDir, startAgent } from '../harness/agent.ts'
import { startContainerd, type TestContainerd } from '../harness/containerd.ts'
import { buildTestImages, type PushedImage, pushTestImages } from '../harness/images.ts'
import { startRegistry } from '../harness/registry.ts'
import { startThrottleProxy } from '../harness/throttle-proxy.ts'
import { barChartSvg } from './chart.ts'

const ROUNDS = Number(process.env.ROUNDS ?? 5)
const IMAGE = process.env.IMAGE ?? 'multi:v1'
const CAP_MBPS = Number(process.env.CAP_MBPS ?? 25)

interface Round {
  round: number
  directMs: number
  agentMs: number
  rssBytes: number
}

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

async function measure(
  setting: string,
  containerd: TestContainerd,
  image: PushedImage,
  upstream: { host: string; url: string }
): Promise<Round[]> {
  const ref = image.ref.replace(image.registryHost, upstream.host)
  const total = image.layers.reduce((n, l) => n + l.size, 0)
  const rounds: Round[] = []
  for (let round = 1; round <= ROUNDS; round++) {
    await containerd.removeAll()
    const direct = await containerd.pull(ref)
    if (direct.code !== 0) throw new Error(`direct pull failed: ${direct.stderr}`)

    await containerd.removeAll()
    const agent = await startAgent({ registries: { [upstream.host]: { url: upstream.url } }, built: true })
    try {
      const via = await containerd.pull(ref, { mirrorHost: agent.mirror })
      if (via.code !== 0) throw new Error(`pull through the agent failed: ${via.stderr}`)
      const status = await agent.status()
      // The pull must really have gone through the agent, not fallen back to the registry.
      if ((status.bytes.served.mirror ?? 0) < total) {
        throw new Error(`the agent served only ${status.bytes.served.mirror ?? 0} of ${total} bytes`)
      }
      const rssBytes = await peakRssBytes(agent.pid)
      rounds.push({ round, directMs: direct.durationMs, agentMs: via.durationMs, rssBytes })
      process.stdout.write(
        `${setting} round ${round}/${ROUNDS}: direct ${direct.durationMs.toFixed(0)} ms, agent ${via.durationMs.toFixed(0)} ms, ` +
          `ratio ${(direct.durationMs / via.durationMs).toFixed(2)}, agent peak RSS ${mb(rssBytes)}\n`
      )
    } finally {
      await agent.stop()
      await removeAgentDir(agent)
    }
  }
  return rounds
}

function summarize(rounds: Round[]) {
  return {
    medianRatio: Number(median(rounds.map((r) => r.directMs / r.agentMs)).toFixed(3)),
    medianDirectMs: Math.round(median(rounds.map((r) => r.directMs))),
    medianAgentMs: Math.round(median(rounds.map((r) => r.agentMs))),
    peakRssMB: Number((Math.max(...rounds.map((r) => r.rssBytes)) / 1e6).toFixed(1)),
    rounds
  }
}

async function main(): Promise<void> {
  process.stdout.write('building and pushing test images ...\n')
  const images = await buildTestImages()
  const registry = await startRegistry()
  const capped = await startThrottleProxy(registry.url, CAP_MBPS * 1e6, { perResponse: true })
  const containerd = await startContainerd()
  const settings: Record<string, ReturnType<typeof summarize>> = {}
  try {
    const pushed = await pushTestImages(registry.host, images)
    const image = pushed[IMAGE]
    if (!image) throw new Error(`no test image ${IMAGE}`)
    const total = image.layers.reduce((n, l) => n + l.size, 0)
    process.stdout.write(
      `image ${image.ref}: ${image.layers.length} layers, ${mb(total)}; ${ROUNDS} rounds\n`
    )
    settings.loopback = summarize(await measure('loopback', containerd, image, registry))
    settings[`capped ${CAP_MBPS} MB/s per connection`] = summarize(
      await measure('capped', containerd, image, capped)
    )
  } finally {
    await containerd.stop()
    await capped.stop()
    await registry.stop()
  }
  const summary = {
    benchmark: 'single-node-pull',
    command: 'npm run bench',
    image: IMAGE,
    rounds: ROUNDS,
    goal: { ratio: '>= 0.9', rssMB: '< 200' },
    date: new Date().toISOString(),
    settings
  }
  const dir = new URL('./results/', import.meta.url)
  await mkdir(dir, { recursive: true })
  await writeFile(new URL('single-node-pull.json', dir), `${JSON.stringify(summary, null, 2)}\n`)
  await writeFile(
    new URL('single-node-pull.svg', dir),
    await barChartSvg({
      title: `Cold containerd pull of ${IMAGE} (median of ${ROUNDS}), lower is better`,
      unit: 'ms',
      groups: Object.entries(settings).map(([name, s]) => ({
        name,
        bars: [
          { label: 'direct', value: s.medianDirectMs },
          { label: 'through the agent', value: s.medianAgentMs }
        ]
      }))
    })
  )
  process.stdout.write('\n')
  for (const [name, s] of Object.entries(settings)) {
    process.stdout.write(
      `${name}: speed ratio (direct / agent, median) ${s.medianRatio.toFixed(2)} (goal >= 0.9), agent peak RSS ${s.peakRssMB} MB (goal < 200 MB)\n`
    )
  }
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : err}\n`)
  process.exit(1)
})
