/**
 * Crash safety: one store, one agent after another, each killed with SIGKILL at a seeded random
 * moment of a pull (from a throttled registry, so the kill lands mid-blob), of an eviction (the
 * quota is smaller than the images), or of a materialization. After every restart:
 *
 * - every blob the store holds complete, and every blob the API ever reported complete, reads
 *   back through the socket API (and one through the mirror) hashing to its digest, or is gone
 *   for the one legitimate reason: an eviction the agent logged after the report;
 * - the restart finds no piece record naming bytes that were never written;
 * - every blob left partial resumes: the next pull takes at most the missing bytes from the
 *   registry (counted by the throttle proxy);
 * - every materialized layer directory is complete (the same tree as an uninterrupted
 *   materialization of the layer) or absent, and no temporary tree is left.
 *
 *   SHOAL_CRASH_SEED=<n> replays a run; HARDENING_SCALE multiplies the number of kills.
 */
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { Level } from 'level'
import { callAgent, streamAgent } from '../../src/cli/socket-client.ts'
import { pieceRange } from '../../src/content/pieces.ts'
import { mulberry32 } from '../../src/sim/random.ts'
import { processAlive, pullDone, removeAgentDir, startAgent, type TestAgent } from '../harness/agent.ts'
import { buildTestImages, type PushedImage, type PushedImages, pushTestImages } from '../harness/images.ts'
import { startRegistry, type TestRegistry } from '../harness/registry.ts'
import { startThrottleProxy, type ThrottleProxy } from '../harness/throttle-proxy.ts'
import { tree } from '../harness/tree.ts'
import { MiB, readBlob } from './probes.ts'
import { scaled } from './scale.ts'
import { tally } from './tally.ts'

const SCRATCH = '/tmp/shoal-crash'
const KILLS = scaled(20)
const SEED = Number(process.env.SHOAL_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31))
const PIECE = MiB
/** Throttled registry rate for pulls that are to be killed mid-blob. */
const RATE = 32 * MiB
/** Smaller than multi:v1 and random together: pulls evict. */
const QUOTA = 120 * MiB
const CONFIG = {
  store: { quota: QUOTA, pieceSize: PIECE },
  fetch: { registryConcurrency: 4 }
}
const PULLED = ['random', 'multi:v1', 'multi:v2'] as const
const MATERIALIZED = ['multi:v1', 'whiteout'] as const
type Action = 'pull' | 'evict' | 'materialize'

/** What the index on disk says, read while no agent runs. */
interface IndexSnapshot {
  complete: Set<string>
  /** Partial blobs: size and held piece indexes. */
  partial: Map<string, { size: number; pieceSize: number; held: number[] }>
}

async function readIndex(storeDir: string): Promise<IndexSnapshot> {
  const db = new Level<string, Record<string, unknown>>(join(storeDir, 'index'), { valueEncoding: 'json' })
  await db.open()
  try {
    const complete = new Set<string>()
    const blobs = new Map<string, { size: number; pieceSize: number; complete: boolean }>()
    for await (const [key, v] of db.iterator({ gte: 'b!', lt: 'b!~' })) {
      const b = v as { size: number; pieceSize: number; complete: boolean }
      blobs.set(key.slice(2), b)
      if (b.complete) complete.add(key.slice(2))
    }
    const partial = new Map<string, { size: number; pieceSize: number; held: number[] }>()
    for await (const key of db.keys({ gte: 'p!', lt: 'p!~' })) {
      const sep = key.lastIndexOf('!')
      const digest = key.slice(2, sep)
      const b = blobs.get(digest)
      if (!b || b.complete) continue
      const entry = partial.get(digest) ?? { size: b.size, pieceSize: b.pieceSize, held: [] }
      entry.held.push(Number(key.slice(sep + 1)))
      partial.set(digest, entry)
    }
    return { complete, partial }
  } finally {
    await db.close()
  }
}

/** Log lines (parsed) of an agent's output with this message. */
function logLines(output: string, msg: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = []
  for (const line of output.split('\n')) {
    if (!line.includes(msg)) continue
    try {
      const j = JSON.parse(line) as Record<string, unknown>
      if (j.msg === msg) out.push(j)
    } catch {
      // not a log line
    }
  }
  return out
}

/**
 * A materialized tree as lines: every path with its type, mode, owner, size and hash. The mtime
 * of an overlay whiteout (a 0:0 character device) is left out: it is made at extraction time.
 */
async function fingerprint(dir: string): Promise<string[]> {
  return [...(await tree(dir)).entries()].map(([path, node]) => {
    const { mtime, ...rest } = node
    return `${path} ${JSON.stringify(node.type === 'char' && node.rdev === 0 ? rest : { ...rest, mtime })}`
  })
}

/** The first lines that differ between two fingerprints, for a failure message. */
function difference(actual: string[], expected: string[] | undefined): string {
  if (expected === undefined) return 'no clean extraction to compare with'
  const want = new Set(expected)
  const got = new Set(actual)
  const extra = actual.filter((l) => !want.has(l)).slice(0, 5)
  const missing = expected.filter((l) => !got.has(l)).slice(0, 5)
  return `${actual.length} paths (clean: ${expected.length}); unexpected: ${extra.join('; ')}; missing: ${missing.join('; ')}`
}

describe('crash safety: SIGKILL during pulls, evictions and materializations', {
  timeout: 30 * 60_000
}, () => {
  let registry: TestRegistry
  let proxy: ThrottleProxy
  let pushed: PushedImages
  let work: string
  let storeDir: string
  const baseline = new Map<string, string[]>()
  let extractMs = 0
  let agent: TestAgent | undefined
  const counts = { kills: 0, lost: 0, corrupt: 0, crashes: 0 }

  const registries = () => ({ [registry.host]: { url: proxy.url } })
  const image = (name: string): PushedImage => {
    const i = pushed[name]
    assert.ok(i, name)
    return i
  }

  before(async () => {
    process.stdout.write(`crash-safety seed ${SEED} (SHOAL_CRASH_SEED=${SEED} replays it), ${KILLS} kills\n`)
    const images = await buildTestImages()
    registry = await startRegistry()
    pushed = await pushTestImages(registry.host, images)
    proxy = await startThrottleProxy(registry.url, 0)
    await mkdir(SCRATCH, { recursive: true })
    work = await mkdtemp(join(SCRATCH, 'run-'))
    storeDir = join(work, 'store')
    // What an uninterrupted materialization of each layer looks like.
    const clean = await startAgent({
      registries: registries(),
      storeDir: join(work, 'baseline'),
      config: { store: { pieceSize: PIECE } }
    })
    try {
      for (const name of MATERIALIZED) {
        await pullDone(clean, image(name).ref)
        const t0 = performance.now()
        await materialize(clean, image(name).ref)
        extractMs = Math.max(extractMs, performance.now() - t0)
        for (const l of image(name).layers) {
          baseline.set(l.digest, await fingerprint(layerDir(join(work, 'baseline'), l.digest)))
        }
      }
      process.stdout.write(`crash-safety: a clean materialization takes up to ${Math.round(extractMs)} ms\n`)
    } finally {
      await clean.stop()
      await removeAgentDir(clean)
      await rm(join(work, 'baseline'), { recursive: true, force: true })
    }
  })

  after(async () => {
    tally('kills survived', counts.kills, import.meta.url)
    tally('lost blobs', counts.lost, import.meta.url)
    tally('corrupt bytes served', counts.corrupt, import.meta.url)
    tally('unexpected crashes', counts.crashes, import.meta.url)
    if (agent) {
      await agent.stop()
      await removeAgentDir(agent)
    }
    await proxy?.stop()
    await registry?.stop()
    if (work) await rm(work, { recursive: true, force: true })
  })

  it(`survives ${KILLS} kills with nothing lost, corrupt or half done`, async () => {
    const rng = mulberry32(SEED)
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)] as T
    /** Output of every agent killed so far. */
    const deadLogs: string[] = []
    /** Digest → evictions logged for it when the API last reported it complete. */
    const reported = new Map<string, number>()
    const evictions = (digest: string, output: string) =>
      logLines(output, 'evicting least recently used blob').filter((l) => l.digest === digest).length
    const allOutput = () => deadLogs.join('\n') + (agent?.logs() ?? '')
    const report = (digest: string) => reported.set(digest, evictions(digest, allOutput()))
    const actions: Record<Action, number> = { pull: 0, evict: 0, materialize: 0 }
    /** Evidence the kills landed where they should: blobs resumed, evictions, extractions cut. */
    const landed = { resumedBlobs: 0, evictions: 0, cutExtractions: 0 }

    agent = await startAgent({ registries: registries(), storeDir, config: CONFIG })
    let lastPulled = ''
    for (let k = 0; k < KILLS; k++) {
      const action = pick(['pull', 'evict', 'materialize'] as const)
      actions[action]++
      const current = agent
      // --- run the action and kill the agent in the middle of it
      if (action === 'materialize') {
        const name = pick(MATERIALIZED)
        proxy.setRate(0)
        for (const e of (await pullEvents(current, image(name).ref)).filter((e) => e.type === 'blob-done'))
          report(e.digest as string)
        await callAgent(current.socket, 'POST', '/v1/prune', {})
        // The extraction starts once the stream says the image is pulled: kill within it.
        let pulledAt = 0
        const running = materialize(current, image(name).ref, (e) => {
          if (e.type === 'pulled') pulledAt = performance.now()
        }).catch(() => undefined)
        const waitFrom = performance.now()
        while (pulledAt === 0 && performance.now() - waitFrom < 10_000) await sleep(2)
        await sleep(rng() * extractMs)
        await kill(current)
        await running
      } else {
        const name = pick(PULLED.filter((n) => n !== lastPulled))
        lastPulled = name
        proxy.setRate(RATE)
        let resolvedAt = 0
        const running = pullEvents(current, image(name).ref, (e) => {
          if (e.type === 'resolved') resolvedAt = performance.now()
          if (e.type === 'blob-done') report(e.digest as string)
        }).catch(() => [])
        const bytes = image(name).layers.reduce((n, l) => n + l.size, 0)
        if (action === 'evict') {
          // Evictions happen as the pull begins its blobs, right after it resolves the image.
          const waitFrom = performance.now()
          while (resolvedAt === 0 && performance.now() - waitFrom < 10_000) await sleep(5)
          await sleep(rng() * 300)
        } else {
          await sleep(100 + rng() * ((bytes / RATE) * 1000))
        }
        await kill(current)
        await running
      }
      deadLogs.push(current.logs())
      await removeAgentDir(current)
      agent = undefined

      // --- what the dead agent left on disk, then a restart on it
      const index = await readIndex(storeDir)
      try {
        agent = await startAgent({ registries: registries(), storeDir, config: CONFIG })
      } catch (err) {
        counts.crashes++
        throw err
      }
      const restarted = agent
      const died = deadLogs.at(-1) ?? ''
      landed.evictions += logLines(died, 'evicting least recently used blob').length
      landed.cutExtractions += logLines(restarted.logs(), 'removing an unfinished layer extraction').length
      const restartLog = () => restarted.logs()
      assert.deepEqual(
        logLines(restartLog(), 'held pieces failed their hash on restart'),
        [],
        `kill ${k} (${action}): a piece record named bytes that were never written`
      )
      assert.deepEqual(logLines(allOutput(), 'blob failed its digest check'), [])
      // A blob dropped at restart for want of its file must be one the dead agent was evicting.
      for (const l of logLines(restartLog(), 'data file missing or of the wrong size; blob dropped')) {
        const d = l.digest as string
        if (evictions(d, died) === 0) {
          counts.lost++
          assert.fail(`kill ${k} (${action}): ${d} lost its data file with no eviction`)
        }
      }

      // --- every blob held complete or reported complete reads back whole and verified
      const present: string[] = []
      for (const d of new Set([...index.complete, ...reported.keys()])) {
        const r = await readBlob({ socket: restarted.socket }, d)
        if (r.status === 200) {
          if (r.digest !== d) counts.corrupt += r.length
          assert.equal(r.digest, d, `kill ${k} (${action}): ${d} read back as ${r.digest}`)
          present.push(d)
          report(d)
          continue
        }
        assert.ok(r.status === 400 || r.status === 404, `kill ${k}: ${d} answered ${r.status}`)
        const since = reported.get(d)
        const evicted = since !== undefined ? evictions(d, allOutput()) > since : evictions(d, died) > 0
        if (!evicted) {
          counts.lost++
          assert.fail(`kill ${k} (${action}): ${d} was complete before the kill and is gone, not evicted`)
        }
        reported.delete(d)
      }
      const layerOf = new Map(Object.values(pushed).flatMap((i) => i.layers.map((l) => [l.digest, i])))
      const viaMirror = present.filter((d) => layerOf.has(d))
      if (viaMirror.length > 0) {
        const d = pick(viaMirror)
        const r = await readBlob({ mirror: restarted.mirror }, d, {
          ns: registry.host,
          repository: layerOf.get(d)?.repository
        })
        if (r.digest !== d) counts.corrupt += r.length
        assert.equal(r.status, 200)
        assert.equal(r.digest, d, `kill ${k}: the mirror served ${d} as ${r.digest}`)
      }

      // --- materialized layers: complete or absent, nothing half done
      const layers = await readdir(join(storeDir, 'materialize', 'layers')).catch(() => [] as string[])
      for (const name of layers) {
        assert.match(name, /^[a-f0-9]{64}$/, `kill ${k}: ${name} left in the layer cache`)
        const d = `sha256:${name}`
        const seen = await fingerprint(layerDir(storeDir, d))
        assert.ok(
          baseline.get(d)?.join('\n') === seen.join('\n'),
          `kill ${k} (${action}): materialized layer ${d} differs from a clean extraction: ${difference(seen, baseline.get(d))}`
        )
      }

      // --- partial blobs resume: only the missing bytes come from the registry
      const partial = [...index.partial].filter(([d]) => layerOf.has(d) || configOf(pushed, d))
      if (partial.length > 0) {
        proxy.setRate(0)
        const t0 = Date.now()
        const images = new Set(partial.map(([d]) => (layerOf.get(d) ?? configOf(pushed, d)) as PushedImage))
        for (const i of images) {
          for (const e of await pullEvents(restarted, i.ref))
            if (e.type === 'blob-done') report(e.digest as string)
        }
        for (const [d, p] of partial) {
          const held = p.held.reduce((n, i) => {
            const r = pieceRange(i, p.size, p.pieceSize)
            return n + r.end - r.start
          }, 0)
          const again = proxy
            .blobRequests()
            .filter((r) => r.digest === d && r.startedAt >= t0)
            .reduce((n, r) => n + r.bytes, 0)
          assert.ok(
            again <= p.size - held,
            `kill ${k} (${action}): ${d} held ${held} of ${p.size} bytes, then took ${again} from the registry`
          )
          assert.ok(again < p.size)
          landed.resumedBlobs++
        }
      }
      counts.kills++
    }
    process.stdout.write(
      `crash-safety: ${counts.kills} kills survived (${JSON.stringify(actions)}; ${JSON.stringify(landed)}), ${counts.lost} lost, ${counts.corrupt} corrupt bytes, seed ${SEED}\n`
    )
    // A run long enough to have landed kills mid-blob and amid evictions must show it did.
    if (KILLS >= 10) {
      assert.ok(landed.resumedBlobs > 0, 'no kill left a partial blob to resume')
      assert.ok(landed.evictions > 0, 'no action evicted anything')
    }
  })

  /** SIGKILLs an agent; an agent already dead crashed on its own. */
  async function kill(a: TestAgent): Promise<void> {
    if (!processAlive(a.pid)) {
      counts.crashes++
      assert.fail(`the agent died before it was killed:\n${a.logs().slice(-3000)}`)
    }
    await a.kill()
  }
})

function layerDir(storeDir: string, digest: string): string {
  return join(storeDir, 'materialize', 'layers', digest.slice(7))
}

function configOf(pushed: PushedImages, digest: string): PushedImage | undefined {
  return Object.values(pushed).find((i) => i.config.digest === digest)
}

/** Pulls through the socket and returns every event (the stream ends early if the agent dies). */
async function pullEvents(
  a: TestAgent,
  reference: string,
  onEvent?: (e: Record<string, unknown>) => void
): Promise<Record<string, unknown>[]> {
  const events: Record<string, unknown>[] = []
  for await (const e of streamAgent<Record<string, unknown>>(a.socket, '/v1/pull', { reference })) {
    events.push(e)
    onEvent?.(e)
  }
  return events
}

/** Materializes an image through the socket; resolves with the final event. */
async function materialize(
  a: TestAgent,
  reference: string,
  onEvent?: (e: Record<string, unknown>) => void
): Promise<Record<string, unknown>> {
  let last: Record<string, unknown> | undefined
  for await (const e of streamAgent<Record<string, unknown>>(a.socket, '/v1/materialize', { reference })) {
    last = e
    onEvent?.(e)
  }
  assert.ok(last?.type === 'done', JSON.stringify(last))
  return last
}
