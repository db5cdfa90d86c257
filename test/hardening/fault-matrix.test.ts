/**
 * The fault matrix: an agent facing peers that stall, reset, lie, corrupt, forge, claim forever
 * or send frames past every limit; a registry that answers 5xx, 429 with Retry-After, cuts
 * bodies or hangs; a full disk under the store and under the layer cache; and a wall clock that
 * jumps. Each case ends with data that hashes to its digest or with a typed error code, never
 * with a byte served that does not match the digest the client asked for.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { pino } from 'pino'
import { streamAgent } from '../../src/cli/socket-client.ts'
import { systemClock } from '../../src/clock.ts'
import { DEFAULT_PIECE_SIZE } from '../../src/constants.ts'
import { digestOf } from '../../src/content/digest.ts'
import { swarmPieceSize } from '../../src/content/pieces.ts'
import { BlobFetcher } from '../../src/fetch/blob-fetcher.ts'
import { TokenBucket } from '../../src/fetch/token-bucket.ts'
import { generateSwarmKey, parseSwarmKey } from '../../src/p2p/swarm-key.ts'
import { pushImage } from '../../src/registry/registry-push.ts'
import { StaticUpstreamResolver } from '../../src/registry/upstream-resolver.ts'
import { LevelBlobStore } from '../../src/store/level-blob-store.ts'
import { Swarm } from '../../src/swarm.ts'
import { lastPullEvent, removeAgentDir, startAgent, type TestAgent } from '../harness/agent.ts'
import { startRegistry, type TestRegistry } from '../harness/registry.ts'
import { startThrottleProxy, type ThrottleProxy } from '../harness/throttle-proxy.ts'
import { MiB, pushRandomImage, type RandomImage, readBlob } from './probes.ts'
import { identitySorted, type RogueMode, type RoguePeer, startRoguePeer } from './rogue-peer.ts'
import { tally } from './tally.ts'

const run = promisify(execFile)
const SCRATCH = '/tmp/shoal-crash'
const logger = pino({ level: 'silent' })

describe('fault matrix', { timeout: 10 * 60_000 }, () => {
  let registry: TestRegistry
  let work: string
  const counts = { faults: 0, corrupt: 0 }

  /** Reads a blob through the socket and the mirror: whatever answers 200 must hash to its digest. */
  async function checkServed(agent: TestAgent, img: RandomImage, mustServe: boolean): Promise<void> {
    for (const target of [{ socket: agent.socket }, { mirror: agent.mirror }]) {
      const r = await readBlob(target, img.digest, { ns: registry.host, repository: img.repository })
      if (r.status === 200 && r.digest !== img.digest) counts.corrupt += r.length
      if (r.status === 200) assert.equal(r.digest, img.digest, `${JSON.stringify(target)} served bad bytes`)
      else assert.ok(!mustServe, `${JSON.stringify(target)} answered ${r.status}`)
    }
  }

  before(async () => {
    registry = await startRegistry()
    await mkdir(SCRATCH, { recursive: true })
    work = await mkdtemp(join(SCRATCH, 'faults-'))
  })
  after(async () => {
    tally('faults injected', counts.faults, import.meta.url)
    tally('corrupt bytes served', counts.corrupt, import.meta.url)
    await registry?.stop()
    if (work) await rm(work, { recursive: true, force: true })
  })

  describe('a registry that fails', () => {
    let proxy: ThrottleProxy
    let agent: TestAgent
    before(async () => {
      proxy = await startThrottleProxy(registry.url, 0)
      agent = await startAgent({
        registries: { [registry.host]: { url: proxy.url } },
        config: {
          store: { pieceSize: '1MiB' },
          fetch: { registryConcurrency: 4 },
          upstream: { retries: 3, connectTimeout: '2s', responseTimeout: '4s', bodyTimeout: '4s' }
        }
      })
    })
    after(async () => {
      await agent?.stop()
      if (agent) await removeAgentDir(agent)
      await proxy?.stop()
    })

    /** Pulls with the faults `inject` queues; returns the pull's last event and the faults played. */
    async function pullWith(img: RandomImage, inject: () => void) {
      proxy.resetCounters()
      inject()
      const end = await lastPullEvent(agent, img.ref)
      const played = proxy.faultsPlayed()
      proxy.clearBlobFaults()
      assert.ok(played > 0, 'the fault was never met')
      counts.faults++
      return { end, played }
    }

    it('5xx, then success: retried, data verified', async () => {
      const img = await pushRandomImage(registry, work, 6 * MiB)
      const { end, played } = await pullWith(img, () =>
        proxy.injectBlobFaults({ kind: 'status', status: 503 }, 3)
      )
      assert.equal(end.type, 'done', JSON.stringify(end))
      assert.equal(played, 3)
      await checkServed(agent, img, true)
    })

    it('429 with Retry-After: the retry waits as asked, data verified', async () => {
      const img = await pushRandomImage(registry, work, 6 * MiB)
      const { end } = await pullWith(img, () =>
        proxy.injectBlobFaults({ kind: 'status', status: 429, retryAfter: '1' }, 1)
      )
      assert.equal(end.type, 'done', JSON.stringify(end))
      // The refused GET may be of the layer or of the config: its retry is the next GET of the same bytes.
      const reqs = proxy.blobRequests()
      const refused = reqs.find((r) => r.fault === 'status')
      assert.ok(refused)
      const retry = reqs.find(
        (r) => r.digest === refused.digest && r.range === refused.range && r.startedAt > refused.startedAt
      )
      assert.ok(retry, 'the refused range was never asked again')
      assert.ok(
        retry.startedAt - refused.startedAt >= 950,
        `retried after ${retry.startedAt - refused.startedAt} ms`
      )
      await checkServed(agent, img, true)
    })

    it('bodies cut mid-way: retried, data verified', async () => {
      const img = await pushRandomImage(registry, work, 6 * MiB)
      const { end, played } = await pullWith(img, () =>
        proxy.injectBlobFaults({ kind: 'cut', afterBytes: 100_000 }, 3)
      )
      assert.equal(end.type, 'done', JSON.stringify(end))
      assert.equal(played, 3)
      await checkServed(agent, img, true)
    })

    it('a body that hangs: UPSTREAM_TIMEOUT, then a clean pull resumes', async () => {
      const img = await pushRandomImage(registry, work, 6 * MiB)
      const { end } = await pullWith(img, () => proxy.injectBlobFaults({ kind: 'hang' }, 1))
      assert.deepEqual(end.type === 'error' && end.code, 'UPSTREAM_TIMEOUT', JSON.stringify(end))
      await checkServed(agent, img, false)
      proxy.resetCounters()
      const again = await lastPullEvent(agent, img.ref)
      assert.equal(again.type, 'done', JSON.stringify(again))
      await checkServed(agent, img, true)
    })

    it('503 on every request: UPSTREAM_UNAVAILABLE, nothing served, then recovers', async () => {
      const img = await pushRandomImage(registry, work, 6 * MiB)
      const { end } = await pullWith(img, () => proxy.injectBlobFaults({ kind: 'status', status: 503 }, 1000))
      assert.deepEqual(end.type === 'error' && end.code, 'UPSTREAM_UNAVAILABLE', JSON.stringify(end))
      const again = await lastPullEvent(agent, img.ref)
      assert.equal(again.type, 'done', JSON.stringify(again))
      await checkServed(agent, img, true)
    })

    it('429 on every request: UPSTREAM_RATE_LIMITED, then recovers', async () => {
      const img = await pushRandomImage(registry, work, 6 * MiB)
      const { end } = await pullWith(img, () =>
        proxy.injectBlobFaults({ kind: 'status', status: 429, retryAfter: '0' }, 1000)
      )
      assert.deepEqual(end.type === 'error' && end.code, 'UPSTREAM_RATE_LIMITED', JSON.stringify(end))
      const again = await lastPullEvent(agent, img.ref)
      assert.equal(again.type, 'done', JSON.stringify(again))
      await checkServed(agent, img, true)
    })
  })

  describe('peers that misbehave', () => {
    const modes: RogueMode[] = ['stall', 'reset', 'liar', 'corrupt', 'forger', 'oversized', 'claimer']
    const rogues = new Map<RogueMode, RoguePeer>()
    const images = new Map<RogueMode, RandomImage>()
    let agent: TestAgent
    before(async () => {
      const keyText = generateSwarmKey()
      const keyFile = join(work, 'swarm.key')
      await writeFile(keyFile, keyText, { mode: 0o600 })
      for (const mode of modes) {
        const img = await pushRandomImage(registry, work, 8 * MiB + 12345)
        images.set(mode, img)
        rogues.set(
          mode,
          await startRoguePeer({
            mode,
            digest: img.digest,
            data: img.data,
            pieceSize: swarmPieceSize(img.data.length, DEFAULT_PIECE_SIZE),
            swarmKey: parseSwarmKey(keyText),
            dir: work,
            logger
          })
        )
      }
      // The agent's peer id sorts above every rogue's: it is the one that gives way to their
      // claims (see BlobTransfer's yield), the path a stale claim once turned into a livelock.
      const storeDir = join(work, 'peer-agent-store')
      await identitySorted(
        storeDir,
        'above',
        [...rogues.values()].map((r) => r.peerId)
      )
      agent = await startAgent({
        registries: { [registry.host]: { url: registry.url } },
        storeDir,
        config: {
          swarm: {
            enabled: true,
            listen: ['/ip4/127.0.0.1/tcp/0'],
            bootstrap: [...rogues.values()].flatMap((r) => r.addresses.slice(0, 1)),
            keyFile,
            findTimeout: '1s'
          }
        }
      })
    })
    after(async () => {
      await agent?.stop()
      if (agent) await removeAgentDir(agent)
      for (const r of rogues.values()) await r.stop()
    })

    it('each ends with the blob verified from the registry, the bad peers banned', async () => {
      // Every peer on loopback answers at once: connected before the pulls start.
      const deadline = Date.now() + 15_000
      while (((await agent.status()).swarm?.peers ?? 0) < modes.length && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100))
      }
      const started = performance.now()
      const results = await Promise.all(
        modes.map(async (mode) => {
          const img = images.get(mode) as RandomImage
          const end = await lastPullEvent(agent, img.ref)
          return { mode, end, ms: Math.round(performance.now() - started) }
        })
      )
      process.stdout.write(
        `peer faults: ${results.map((r) => `${r.mode} ${r.end.type} in ${r.ms} ms`).join(', ')}\n`
      )
      for (const { mode, end } of results) {
        assert.equal(end.type, 'done', `${mode}: ${JSON.stringify(end)}`)
        const rogue = rogues.get(mode) as RoguePeer
        assert.ok(rogue.stats.hellos > 0, `${mode}: the agent never asked the rogue peer`)
        if (mode !== 'claimer') assert.ok(rogue.stats.requests > 0, `${mode}: no piece was asked of it`)
        counts.faults++
        await checkServed(agent, images.get(mode) as RandomImage, true)
      }
      // The peers that sent bad bytes (corrupt) or vouched for forged ones are banned.
      const swarm = (await agent.status()).swarm as unknown as { banned: number }
      assert.ok(swarm.banned >= 2, `banned: ${swarm.banned}`)
    })
  })

  describe('a full disk', () => {
    const mounts: string[] = []
    const mountTmpfs = async (dir: string, size: string) => {
      await mkdir(dir, { recursive: true })
      await run('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir])
      mounts.push(dir)
    }
    after(async () => {
      for (const m of mounts.reverse()) await run('umount', [m]).catch(() => undefined)
    })

    it('under the store: DISK_FULL, the agent stays up, restarts on the full disk, recovers when there is room', async () => {
      const storeDir = join(work, 'full-store')
      await mountTmpfs(storeDir, '24m')
      const small = await pushRandomImage(registry, work, 8 * MiB)
      const big = await pushRandomImage(registry, work, 40 * MiB)
      const config = { store: { quota: '1GiB', pieceSize: '1MiB' } }
      const registries = { [registry.host]: { url: registry.url } }
      let agent = await startAgent({ registries, storeDir, config })
      try {
        assert.equal((await lastPullEvent(agent, small.ref)).type, 'done')
        const end = await lastPullEvent(agent, big.ref)
        assert.deepEqual(end.type === 'error' && end.code, 'DISK_FULL', JSON.stringify(end))
        counts.faults++
        // Still up, still serving what it holds, never the blob it could not finish.
        assert.equal((await agent.status()).store.completeBlobs >= 1, true)
        await checkServed(agent, small, true)
        const partial = await readBlob({ socket: agent.socket }, big.digest)
        if (partial.status === 200 && partial.digest !== big.digest) counts.corrupt += partial.length
        assert.notEqual(partial.status, 200)
        // A restart on the full disk comes up and still serves the complete blob.
        await agent.stop()
        await removeAgentDir(agent)
        agent = await startAgent({ registries, storeDir, config })
        await checkServed(agent, small, true)
        // With room again, the big blob completes and verifies.
        await run('mount', ['-o', 'remount,size=128m', storeDir])
        assert.equal((await lastPullEvent(agent, big.ref)).type, 'done')
        await checkServed(agent, big, true)
        // Full again, then room again, with no restart between: the same agent recovers.
        const bigger = await pushRandomImage(registry, work, 96 * MiB)
        const again = await lastPullEvent(agent, bigger.ref)
        assert.deepEqual(again.type === 'error' && again.code, 'DISK_FULL', JSON.stringify(again))
        counts.faults++
        await run('mount', ['-o', 'remount,size=256m', storeDir])
        assert.equal((await lastPullEvent(agent, bigger.ref)).type, 'done')
        await checkServed(agent, bigger, true)
        await checkServed(agent, small, true)
      } finally {
        await agent.stop()
        await removeAgentDir(agent)
      }
    })

    it('under the layer cache: DISK_FULL from materialize, no partial layer left', async () => {
      const cacheDir = join(work, 'full-cache')
      await mountTmpfs(cacheDir, '4m')
      // A real tar layer larger than the cache: a file of random bytes inside.
      const tarDir = join(work, 'tar-src')
      await mkdir(tarDir, { recursive: true })
      await writeFile(join(tarDir, 'big.bin'), randomBytes(6 * MiB))
      const tarPath = join(work, 'layer.tar')
      await run('tar', ['-C', tarDir, '-cf', tarPath, 'big.bin'])
      const tarBytes = new Uint8Array(await readFile(tarPath))
      const digest = digestOf(tarBytes)
      await pushImage({
        registry: registry.url,
        repository: 'faults/tar',
        tag: 'latest',
        layers: [
          {
            mediaType: 'application/vnd.oci.image.layer.v1.tar',
            digest,
            size: tarBytes.length,
            path: tarPath
          }
        ]
      })
      const agent = await startAgent({
        registries: { [registry.host]: { url: registry.url } },
        config: { materialize: { dir: cacheDir } }
      })
      try {
        let last: Record<string, unknown> | undefined
        for await (const e of streamAgent<Record<string, unknown>>(agent.socket, '/v1/materialize', {
          reference: `${registry.host}/faults/tar:latest`
        }))
          last = e
        assert.equal(last?.type, 'error', JSON.stringify(last))
        assert.equal(last?.code, 'DISK_FULL', JSON.stringify(last))
        counts.faults++
        assert.deepEqual(await readdir(join(cacheDir, 'layers')), [])
        const health = await fetch(`http://${agent.mirror}/v2/`)
        assert.equal(health.status, 200)
      } finally {
        await agent.stop()
        await removeAgentDir(agent)
      }
    })
  })

  describe('a wall clock that jumps', () => {
    it('a token bucket whose clock steps back an hour still paces, and does not stall', {
      timeout: 20_000
    }, async () => {
      let offset = 0
      const bucket = new TokenBucket(10 * MiB, MiB, () => performance.now() + offset)
      await bucket.take(MiB)
      offset = -3600_000
      const t0 = performance.now()
      for (let i = 0; i < 5; i++) await bucket.take(MiB)
      const ms = performance.now() - t0
      // 5 MiB at 10 MiB/s: about half a second, not an hour.
      assert.ok(ms >= 300 && ms < 3000, `took ${ms} ms`)
      offset = 3600_000
      const t1 = performance.now()
      for (let i = 0; i < 5; i++) await bucket.take(MiB)
      // A step forward fills the bucket once (one burst), then the rate holds.
      assert.ok(performance.now() - t1 >= 300, `took ${performance.now() - t1} ms`)
      counts.faults++
    })

    for (const jump of [-3600_000, 3600_000]) {
      it(`a transfer whose wall clock jumps ${jump > 0 ? 'forward' : 'back'} an hour past a peer's stale claims completes`, async () => {
        const dir = await mkdtemp(join(work, 'clock-'))
        const keyText = generateSwarmKey()
        const keyFile = join(dir, 'swarm.key')
        await writeFile(keyFile, keyText, { mode: 0o600 })
        const img = await pushRandomImage(registry, dir, 4 * MiB)
        const claimer = await startRoguePeer({
          mode: 'claimer',
          digest: img.digest,
          data: img.data,
          pieceSize: swarmPieceSize(img.data.length, DEFAULT_PIECE_SIZE),
          swarmKey: parseSwarmKey(keyText),
          dir,
          logger
        })
        // Below the claimer: this node never gives way to its claims, so only their age (on a
        // clock that must not step) decides when the registry takes the pieces.
        await identitySorted(join(dir, 'store'), 'below', [claimer.peerId])
        const store = new LevelBlobStore(
          { clock: systemClock, logger },
          { root: join(dir, 'store'), quotaBytes: 1 << 30 }
        )
        const upstreams = new StaticUpstreamResolver(
          { logger },
          {
            registries: { [registry.host]: { url: registry.url } },
            connectTimeoutMs: 2000,
            responseTimeoutMs: 5000,
            bodyTimeoutMs: 5000,
            retries: 2
          }
        )
        const swarm = new Swarm(
          { store, logger },
          {
            listen: ['/ip4/127.0.0.1/tcp/0'],
            bootstrap: claimer.addresses.slice(0, 1),
            keyFile,
            findTimeout: 1000,
            uploadSlots: 8,
            storeDir: join(dir, 'store')
          }
        )
        const realNow = Date.now
        await store.start()
        await swarm.start()
        const fetcher = new BlobFetcher(
          { store, upstreams, clock: systemClock, logger, peers: swarm.peers },
          { claimTtlMs: 1000 }
        )
        try {
          const fetching = fetcher.fetch({
            digest: img.digest,
            size: img.data.length,
            registry: registry.host,
            repository: img.repository
          })
          await claimer.offered
          await new Promise((r) => setTimeout(r, 100))
          // The wall clock steps (NTP, a resumed VM) while the claims are held.
          Date.now = () => realNow() + jump
          const stalled = new Promise<never>((_, reject) =>
            setTimeout(() => reject(new Error('the transfer stalled behind stale claims')), 20_000).unref()
          )
          const info = await Promise.race([fetching, stalled])
          Date.now = realNow
          assert.equal(info.complete, true)
          const bytes = await store.read(img.digest, { start: 0, end: info.size })
          assert.equal(digestOf(bytes), img.digest)
          assert.ok(claimer.stats.hellos > 0)
          counts.faults++
        } finally {
          Date.now = realNow
          await fetcher.stop()
          await swarm.stop()
          await upstreams.close()
          await store.stop()
          await claimer.stop()
        }
      })
    }
  })
})
