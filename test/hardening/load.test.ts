/**
 * Load: hundreds of requests at once against one agent, on the socket API and the mirror
 * (range reads, whole blobs, pulls, one of them cold), every response byte checked against the
 * image layouts, the agent's memory sampled all along; then a swarm of three agents passing
 * fresh blobs among themselves for a while, their memory and open files sampled, which must stay
 * flat once warm.
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { generateSwarmKey } from '../../src/p2p/swarm-key.ts'
import { mulberry32 } from '../../src/sim/random.ts'
import { lastPullEvent, pullDone, removeAgentDir, startAgent, type TestAgent } from '../harness/agent.ts'
import { buildTestImages, type PushedImages, pushTestImages } from '../harness/images.ts'
import { startRegistry, type TestRegistry } from '../harness/registry.ts'
import { MiB, mean, type ProcessSample, pushRandomImage, readBlob, sampleEvery } from './probes.ts'
import { hardeningScale, scaled } from './scale.ts'
import { tally } from './tally.ts'

const SCRATCH = '/tmp/shoal-crash'
const CONCURRENT = scaled(300)
const SWARM_SECONDS = 40 * hardeningScale()
/** How much the agent's RSS may grow while it holds the burst. */
const RSS_CEILING = 300 * MiB

function sha256(b: Uint8Array): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`
}

function show(samples: ProcessSample[]): string {
  return samples
    .map((s) => `${(s.at / 1000).toFixed(0)}s ${(s.rssBytes / MiB).toFixed(0)}M ${s.fds}fd`)
    .join(', ')
}

describe('load', { timeout: 15 * 60_000 }, () => {
  let registry: TestRegistry
  let pushed: PushedImages
  let work: string
  let held = 0

  before(async () => {
    const images = await buildTestImages()
    registry = await startRegistry()
    pushed = await pushTestImages(registry.host, images)
    await mkdir(SCRATCH, { recursive: true })
    work = await mkdtemp(join(SCRATCH, 'load-'))
  })
  after(async () => {
    tally('concurrent requests held', held, import.meta.url)
    await registry?.stop()
    if (work) await rm(work, { recursive: true, force: true })
  })

  it(`${CONCURRENT} requests at once on the socket and the mirror, every byte verified, memory bounded`, async () => {
    const agent = await startAgent({ registries: { [registry.host]: { url: registry.url } } })
    try {
      const warm = ['random', 'multi:v1', 'tiny', 'whiteout']
        .map((n) => pushed[n])
        .filter((i) => i !== undefined)
      for (const i of warm) await pullDone(agent, i.ref)
      const cold = pushed['multi:v2']
      assert.ok(cold)
      // What each blob must be, from the layouts the images were pushed from.
      const bytes = new Map<string, Uint8Array>()
      const repoOf = new Map<string, string>()
      for (const i of warm) {
        for (const b of [i.config, ...i.layers]) {
          bytes.set(
            b.digest,
            new Uint8Array(await readFile(join(i.layout, 'blobs', 'sha256', b.digest.slice(7))))
          )
          repoOf.set(b.digest, i.repository)
        }
      }
      const big = [...bytes.keys()].filter((d) => (bytes.get(d)?.length ?? 0) > 8 * MiB)
      const small = [...bytes.keys()].filter((d) => (bytes.get(d)?.length ?? 0) <= 8 * MiB)
      const rng = mulberry32(CONCURRENT)
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)] as T

      const sampler = sampleEvery(agent.pid, 100)
      const kinds: Record<string, number> = {}
      let inFlight = 0
      let peak = 0
      const failures: string[] = []
      const one = async (k: number): Promise<void> => {
        const roll = rng()
        const digest = roll < 0.75 ? pick(big) : pick(small)
        const data = bytes.get(digest) as Uint8Array
        const mirror = k % 2 === 1
        const target = mirror ? { mirror: agent.mirror } : { socket: agent.socket }
        const opts = { ns: registry.host, repository: repoOf.get(digest) }
        inFlight++
        peak = Math.max(peak, inFlight)
        try {
          if (k % 25 === 0) {
            kinds.pull = (kinds.pull ?? 0) + 1
            const image = k === 0 ? cold : pick(warm)
            const end = await lastPullEvent(agent, image.ref)
            if (end.type !== 'done') failures.push(`pull ${image.ref}: ${JSON.stringify(end)}`)
          } else if (roll < 0.65) {
            kinds.range = (kinds.range ?? 0) + 1
            const start = Math.floor(rng() * (data.length - 1))
            const end = Math.min(data.length, start + 1 + Math.floor(rng() * 2 * MiB))
            const r = await readBlob(target, digest, {
              ...opts,
              range: `bytes=${start}-${end - 1}`,
              keep: true
            })
            const want = sha256(data.subarray(start, end))
            if (r.status !== 206 || r.digest !== want)
              failures.push(`range ${digest} ${start}-${end}: ${r.status}`)
          } else {
            kinds.whole = (kinds.whole ?? 0) + 1
            const r = await readBlob(target, digest, opts)
            if (r.status !== 200 || r.digest !== digest)
              failures.push(`blob ${digest}: ${r.status} ${r.digest}`)
          }
        } catch (err) {
          failures.push(`request ${k}: ${(err as Error).message}`)
        } finally {
          inFlight--
        }
      }
      const t0 = performance.now()
      await Promise.all(Array.from({ length: CONCURRENT }, (_, k) => one(k)))
      const ms = Math.round(performance.now() - t0)
      const samples = await sampler.stop()
      const start = samples[0]?.rssBytes ?? 0
      const top = Math.max(...samples.map((s) => s.rssBytes))
      process.stdout.write(
        `load: ${CONCURRENT} requests (${JSON.stringify(kinds)}) in ${ms} ms, ${peak} in flight at once; agent RSS ${(start / MiB).toFixed(0)} MiB at start, peak ${(top / MiB).toFixed(0)} MiB (+${((top - start) / MiB).toFixed(0)}), fds peak ${Math.max(...samples.map((s) => s.fds))}\n`
      )
      assert.deepEqual(failures, [])
      assert.equal(peak, CONCURRENT)
      held += CONCURRENT
      assert.ok(top - start < RSS_CEILING, `RSS grew by ${((top - start) / MiB).toFixed(0)} MiB`)
      // Still healthy after the burst, and the cold image is whole.
      for (const l of cold.layers)
        assert.equal((await readBlob({ socket: agent.socket }, l.digest)).digest, l.digest)
    } finally {
      await agent.stop()
      await removeAgentDir(agent)
    }
  })

  it(`three agents passing fresh blobs for ${SWARM_SECONDS} s: memory and open files stay flat`, async () => {
    const keyFile = join(work, 'swarm.key')
    await writeFile(keyFile, generateSwarmKey(), { mode: 0o600 })
    const blobs = join(work, 'blobs')
    await mkdir(blobs, { recursive: true })
    const agents: TestAgent[] = []
    const start = async (bootstrap: string[]) => {
      const a = await startAgent({
        registries: { [registry.host]: { url: registry.url } },
        config: {
          // Small enough that the run keeps evicting: the store stays bounded, eviction runs too.
          store: { quota: '64MiB' },
          swarm: { enabled: true, listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap, keyFile, findTimeout: '1s' }
        }
      })
      agents.push(a)
      return a
    }
    try {
      const first = await start([])
      const boot = (await first.status()).swarm?.addresses ?? []
      await start(boot)
      await start(boot)
      const samplers = agents.map((a) => sampleEvery(a.pid, 1000))
      const t0 = performance.now()
      let rounds = 0
      let fromPeers = 0
      while (performance.now() - t0 < SWARM_SECONDS * 1000) {
        const img = await pushRandomImage(registry, blobs, 6 * MiB, 'load')
        await rm(join(blobs, img.digest.slice(7)))
        const seeder = agents[rounds % agents.length] as TestAgent
        await pullDone(seeder, img.ref)
        const others = agents.filter((a) => a !== seeder)
        const ends = await Promise.all(others.map((a) => pullDone(a, img.ref)))
        fromPeers += ends.reduce((n, e) => n + (e.bytes.peer ?? 0), 0)
        for (const a of agents) {
          const r = await readBlob({ socket: a.socket }, img.digest)
          assert.equal(r.digest, img.digest)
        }
        rounds++
      }
      const all = await Promise.all(samplers.map((s) => s.stop()))
      process.stdout.write(
        `swarm load: ${rounds} rounds in ${SWARM_SECONDS} s, ${(fromPeers / MiB).toFixed(0)} MiB passed between agents\n`
      )
      assert.ok(fromPeers > 0, 'no blob went from one agent to another')
      for (const [k, samples] of all.entries()) {
        process.stdout.write(`agent ${k}: ${show(samples)}\n`)
        // Warm-up: the first fifth. Then the first and last quarters of what is left.
        const steady = samples.slice(Math.floor(samples.length / 5))
        const q = Math.max(1, Math.floor(steady.length / 4))
        const head = steady.slice(0, q)
        const tail = steady.slice(-q)
        const rss = [mean(head.map((s) => s.rssBytes)), mean(tail.map((s) => s.rssBytes))] as const
        const fds = [mean(head.map((s) => s.fds)), mean(tail.map((s) => s.fds))] as const
        process.stdout.write(
          `agent ${k}: RSS ${(rss[0] / MiB).toFixed(0)} -> ${(rss[1] / MiB).toFixed(0)} MiB, fds ${fds[0].toFixed(1)} -> ${fds[1].toFixed(1)}\n`
        )
        assert.ok(rss[1] <= rss[0] * 1.25 + 16 * MiB, `agent ${k}: RSS grew from ${rss[0]} to ${rss[1]}`)
        assert.ok(fds[1] <= fds[0] + 8, `agent ${k}: open files grew from ${fds[0]} to ${fds[1]}`)
      }
    } finally {
      for (const a of agents) {
        await a.stop()
        await removeAgentDir(a)
      }
    }
  })
})
