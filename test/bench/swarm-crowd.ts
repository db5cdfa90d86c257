/**
 * Benchmark: a flash crowd of N real agents against the theoretical limit. Every agent's upload
 * and download are capped (`swarm.uploadRate`, `fetch.downloadRate`) below what this machine's
 * CPU carries, and so is the registry (a proxy in front of the real docker-registry, which also
 * counts its egress per byte), so the caps, not the machine, are the links. One run prints:
 *
 *   - registry egress as a multiple of the image, the swarm against every node pulling straight
 *     from the registry (the baseline, the same caps);
 *   - p50 and p99 completion time against the lower bound
 *     T_min = max(F/u_s, F/d_min, N*F/(u_s + sum u_i));
 *   - peer-to-peer piece throughput (verified pieces written to a real store) as a ratio of raw
 *     libp2p stream throughput between the same two processes.
 *
 *   npm run bench:crowd                          # N=10, 2 MB/s per agent, registry 8 MB/s
 *   NODES=12 RATE=1.5e6 SEED_RATE=6e6 npm run bench:crowd
 */
import '../../src/polyfill.ts'
import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { multiaddr } from '@multiformats/multiaddr'
import { pino } from 'pino'
import { systemClock } from '../../src/clock.ts'
import { MiB } from '../../src/constants.ts'
import { pieceCount } from '../../src/content/pieces.ts'
import { PieceExchange } from '../../src/p2p/piece-exchange.ts'
import { generateSwarmKey } from '../../src/p2p/swarm-key.ts'
import { renderRunPlots } from '../../src/sim/plots.ts'
import { LevelBlobStore } from '../../src/store/level-blob-store.ts'
import { buildTestImages, pushTestImages } from '../harness/images.ts'
import { startRegistry } from '../harness/registry.ts'
import { startThrottleProxy, type ThrottleProxy } from '../harness/throttle-proxy.ts'
import { loopbackSwarmNode, pull, quantile, RAW_PROTOCOL, startAgents, stopAgents } from './bench-agents.ts'
import { barChartSvg } from './chart.ts'

const NODES = Number(process.env.NODES ?? 10)
const IMAGE = process.env.IMAGE ?? 'random'
/** Each agent's upload and download cap, bytes per second. */
const RATE = Number(process.env.RATE ?? 2e6)
/** The registry's upload cap, bytes per second, shared by all its responses. */
const SEED_RATE = Number(process.env.SEED_RATE ?? 8e6)
/** Size of the blob the throughput test moves, and rounds of it. */
const THROUGHPUT_BYTES = Number(process.env.THROUGHPUT_BYTES ?? 64 * MiB)
const THROUGHPUT_ROUNDS = 3
/** `ONLY=swarm`: the flash crowd alone, for quick iterations (nothing is written). */
const SWARM_ONLY = process.env.ONLY === 'swarm'

const log = (line: string) => process.stdout.write(`${line}\n`)

interface CrowdResult {
  egressMultiple: number
  p50: number
  p99: number
  times: number[]
  fromPeers: number
}

/** N agents pull `ref` at once; times in seconds. */
async function crowd(
  label: string,
  ref: string,
  size: number,
  registry: { host: string; proxy: ThrottleProxy },
  layers: string[],
  options: { keyFile?: string }
): Promise<CrowdResult> {
  const { proxy } = registry
  const config = {
    fetch: { downloadRate: RATE },
    swarm: { uploadRate: RATE },
    ...(process.env.PIECE_SIZE && { store: { pieceSize: Number(process.env.PIECE_SIZE) } }),
    // `LOGS=<dir>`: every agent logs at debug level, written there when the crowd is done.
    ...(process.env.LOGS && { log: { level: 'debug' } })
  }
  // The image names the registry; the agents reach it through the proxy.
  const agents = await startAgents(NODES, { host: registry.host, url: proxy.url }, { ...options, config })
  try {
    proxy.resetCounters()
    let finished = 0
    const started = performance.now()
    const wallStart = Date.now()
    const progress = setInterval(() => {
      const s = ((performance.now() - started) / 1000).toFixed(0)
      log(`  ${label}: ${finished}/${NODES} done after ${s} s`)
    }, 10_000)
    const pulls = await Promise.all(
      agents.map((a) =>
        pull(a, ref).then((r) => {
          finished++
          return r
        })
      )
    ).finally(() => clearInterval(progress))
    const times = pulls.map((p) => p.ms / 1000)
    const peerBytes = pulls.reduce((n, p) => n + (p.bytes.peer ?? 0), 0)
    const egress = layers.reduce((n, d) => n + proxy.blobBytes(d), 0)
    if (options.keyFile) describeRequests(proxy, layers, wallStart)
    return {
      egressMultiple: egress / size,
      p50: quantile(times, 0.5),
      p99: quantile(times, 0.99),
      times,
      fromPeers: peerBytes / (size * NODES)
    }
  } finally {
    if (process.env.LOGS) {
      await mkdir(process.env.LOGS, { recursive: true })
      for (const [i, a] of agents.entries())
        await writeFile(join(process.env.LOGS, `${label}-${i}.log`), a.logs())
    }
    await stopAgents(agents)
  }
}

interface PeerInfo {
  peerId: string
  addresses: string[]
  digest: string
  size: number
  pieceSize: number
}

/**
 * MB/s between this process and a peer process: raw bytes on a bare libp2p stream, and verified
 * pieces over the piece protocol (4 requests in flight, as a transfer keeps per peer) written
 * to a real store. Rounds alternate; the medians are compared.
 */
async function throughput(dir: string, keyFile: string): Promise<{ raw: number; pieces: number }> {
  const child: ChildProcess = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      new URL('./peer-process.ts', import.meta.url).pathname,
      keyFile,
      String(THROUGHPUT_BYTES),
      String(4 * MiB)
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] }
  )
  const logger = pino({ level: 'silent' })
  const store = new LevelBlobStore(
    { clock: systemClock, logger },
    { root: join(dir, 'store'), quotaBytes: 4 * THROUGHPUT_BYTES }
  )
  const node = await loopbackSwarmNode(keyFile, logger)
  const exchange = new PieceExchange({ node, store, logger }, {})
  try {
    const [line] = (await once(
      createInterface({ input: child.stdout as NodeJS.ReadableStream }),
      'line'
    )) as [string]
    const peer = JSON.parse(line) as PeerInfo
    await store.start()
    await node.start()
    await exchange.start()
    const target = peer.addresses.map((a) => multiaddr(a))
    const raw: number[] = []
    const pieces: number[] = []
    for (let round = 0; round < THROUGHPUT_ROUNDS; round++) {
      let t = performance.now()
      const stream = await node.libp2p.dialProtocol(target, RAW_PROTOCOL)
      let got = 0
      for await (const chunk of stream) got += chunk.byteLength
      if (got !== peer.size) throw new Error(`raw stream carried ${got} of ${peer.size} bytes`)
      raw.push(peer.size / 1e6 / ((performance.now() - t) / 1000))

      t = performance.now()
      await store.begin(peer.digest, { size: peer.size, pieceSize: peer.pieceSize })
      const session = await exchange.openSession(
        { peerId: peer.peerId, addresses: peer.addresses },
        peer.digest
      )
      const count = pieceCount(peer.size, peer.pieceSize)
      let next = 0
      const worker = async () => {
        for (let i = next++; i < count; i = next++) {
          const data = await session.fetchPiece(i)
          await store.putPiece(peer.digest, i, data, { sha256: session.hashOf(i) as string, source: 'peer' })
        }
      }
      await Promise.all([worker(), worker(), worker(), worker()])
      await session.close()
      await store.complete(peer.digest)
      pieces.push(peer.size / 1e6 / ((performance.now() - t) / 1000))
      await store.delete(peer.digest)
      log(
        `  round ${round + 1}: raw ${raw.at(-1)?.toFixed(0)} MB/s, pieces ${pieces.at(-1)?.toFixed(0)} MB/s`
      )
    }
    return { raw: quantile(raw, 0.5), pieces: quantile(pieces, 0.5) }
  } finally {
    child.stdin?.end()
    await exchange.stop()
    await node.stop()
    await store.stop()
    if (child.exitCode === null) await once(child, 'exit')
  }
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'sh-crowd-bench-'))
  const keyFile = join(dir, 'swarm.key')
  await writeFile(keyFile, generateSwarmKey(), { mode: 0o600 })

  log('peer-to-peer throughput, pieces against a raw libp2p stream (separate processes) ...')
  const tp = SWARM_ONLY ? { raw: Number.NaN, pieces: Number.NaN } : await throughput(dir, keyFile)
  const ratio = tp.pieces / tp.raw
  log(
    `throughput: raw ${tp.raw.toFixed(0)} MB/s, pieces ${tp.pieces.toFixed(0)} MB/s, ratio ${ratio.toFixed(2)} (goal >= 0.8)`
  )

  log('building and pushing test images ...')
  const images = await buildTestImages()
  const registry = await startRegistry()
  const proxy = await startThrottleProxy(registry.url, SEED_RATE)
  let swarm: CrowdResult
  let baseline: CrowdResult
  let size: number
  let tMin: number
  try {
    const image = (await pushTestImages(registry.host, images))[IMAGE]
    if (!image) throw new Error(`no test image ${IMAGE}`)
    size = image.layers.reduce((n, l) => n + l.size, 0)
    const layers = image.layers.map((l) => l.digest)
    // Every agent has the same caps: u_i = d_i = RATE.
    tMin = Math.max(size / SEED_RATE, size / RATE, (NODES * size) / (SEED_RATE + NODES * RATE))
    log(
      `image ${image.ref}: ${(size / 1e6).toFixed(1)} MB of layers; ${NODES} agents at ${(RATE / 1e6).toFixed(1)} MB/s up and down, registry ${(SEED_RATE / 1e6).toFixed(1)} MB/s; T_min ${tMin.toFixed(1)} s`
    )
    log('baseline: every agent pulls straight from the registry ...')
    baseline = SWARM_ONLY
      ? { egressMultiple: Number.NaN, p50: Number.NaN, p99: Number.NaN, times: [], fromPeers: 0 }
      : await crowd('baseline', image.ref, size, { host: registry.host, proxy }, layers, {})
    log('swarm: a flash crowd ...')
    swarm = await crowd('swarm', image.ref, size, { host: registry.host, proxy }, layers, { keyFile })
  } finally {
    await proxy.stop()
    await registry.stop()
    await rm(dir, { recursive: true, force: true })
  }

  const row = (name: string, r: CrowdResult) =>
    `${name.padEnd(10)} egress ${r.egressMultiple.toFixed(2)}x  p50 ${r.p50.toFixed(1)} s (${(r.p50 / tMin).toFixed(2)} T_min)  p99 ${r.p99.toFixed(1)} s (${(r.p99 / tMin).toFixed(2)} T_min)  from peers ${(100 * r.fromPeers).toFixed(0)} %`
  log('')
  log(row('baseline', baseline))
  log(row('swarm', swarm))
  log(
    `swarm against baseline: egress ${(swarm.egressMultiple / baseline.egressMultiple).toFixed(2)}x, p50 ${(swarm.p50 / baseline.p50).toFixed(2)}x`
  )
  const goals = {
    egress: swarm.egressMultiple <= 1.2,
    p50: swarm.p50 <= 1.3 * tMin,
    p99: swarm.p99 <= 2 * tMin,
    throughput: ratio >= 0.8
  }
  log(
    `goals: egress <= 1.2 ${mark(goals.egress)}, p50 <= 1.3 T_min ${mark(goals.p50)}, p99 <= 2 T_min ${mark(goals.p99)}, throughput ratio >= 0.8 ${mark(goals.throughput)}`
  )

  if (SWARM_ONLY) return
  const out = new URL('./results/', import.meta.url)
  await mkdir(out, { recursive: true })
  const round = (r: CrowdResult) => ({
    egressMultiple: Number(r.egressMultiple.toFixed(3)),
    p50Seconds: Number(r.p50.toFixed(2)),
    p99Seconds: Number(r.p99.toFixed(2)),
    fromPeers: Number(r.fromPeers.toFixed(3)),
    timesSeconds: r.times.map((t) => Number(t.toFixed(2)))
  })
  const summary = {
    benchmark: 'swarm-crowd',
    command: 'npm run bench:crowd',
    date: new Date().toISOString(),
    nodes: NODES,
    image: IMAGE,
    imageBytes: size,
    agentRate: RATE,
    registryRate: SEED_RATE,
    tMinSeconds: Number(tMin.toFixed(2)),
    baseline: round(baseline),
    swarm: round(swarm),
    throughput: {
      rawMBps: Math.round(tp.raw),
      piecesMBps: Math.round(tp.pieces),
      ratio: Number(ratio.toFixed(2))
    },
    goals
  }
  await writeFile(new URL('swarm-crowd.json', out), `${JSON.stringify(summary, null, 2)}\n`)
  const [cdf] = await renderRunPlots(
    [
      { label: 'swarm', completion: swarm.times, tMin, imageBytes: size },
      { label: 'registry only', completion: baseline.times, tMin, imageBytes: size }
    ],
    { title: `${NODES} agents pull ${IMAGE} at once`, only: ['completion-cdf'] }
  )
  await writeFile(new URL('swarm-crowd.svg', out), cdf!.svg)
  await writeFile(
    new URL('swarm-crowd-egress.svg', out),
    await barChartSvg({
      title: `Registry egress, ${NODES} agents (multiples of the image)`,
      unit: 'x',
      groups: [
        { name: 'registry only', bars: [{ label: 'egress', value: baseline.egressMultiple }] },
        { name: 'swarm', bars: [{ label: 'egress', value: swarm.egressMultiple }] }
      ]
    })
  )
}

/** Where the registry's bytes went: requests, ranges sent more than once, requests cut short. */
function describeRequests(proxy: ThrottleProxy, layers: string[], t0: number): void {
  const reqs = proxy.blobRequests().filter((r) => layers.includes(r.digest))
  const byRange = new Map<string, typeof reqs>()
  for (const r of reqs) {
    const key = `${r.digest.slice(7, 15)} ${r.range ?? 'all'}`
    byRange.set(key, [...(byRange.get(key) ?? []), r])
  }
  const repeated = [...byRange].filter(([, rs]) => rs.length > 1)
  const cut = reqs.filter((r) => {
    const m = /bytes=(\d+)-(\d+)/.exec(r.range ?? '')
    return m && r.bytes < Number(m[2]) - Number(m[1]) + 1
  })
  log(
    `  registry: ${reqs.length} blob requests, ${repeated.length} ranges sent more than once, ${cut.length} cut short`
  )
  if (process.env.VERBOSE) {
    for (const [key, rs] of repeated) {
      const when = rs.map(
        (r) =>
          `${((r.startedAt - t0) / 1000).toFixed(1)}-${(((r.endedAt ?? 0) - t0) / 1000).toFixed(1)}s ${(r.bytes / 1e6).toFixed(1)}MB`
      )
      log(`    ${key}: ${when.join(', ')}`)
    }
  }
}

function mark(ok: boolean): string {
  return ok ? 'met' : 'NOT met'
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : err}\n`)
  process.exit(1)
})
