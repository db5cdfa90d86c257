import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { callAgent, streamAgent } from '../../../src/cli/socket-client.ts'
import { digestOf } from '../../../src/content/digest.ts'
import type { PullEvent } from '../../../src/fetch/image-puller.ts'
import type { EvictResult } from '../../../src/interface/store.ts'
import { loadOrCreatePrivateKey } from '../../../src/p2p/identity.ts'
import { generateSwarmKey } from '../../../src/p2p/swarm-key.ts'
import { until } from '../../harness/agent.ts'
import {
  type ExampleAgent,
  type LogLine,
  removeExampleAgent,
  startExampleAgent
} from '../../harness/example-agent.ts'
import { buildTestImages, type PushedImage, pushTestImages } from '../../harness/images.ts'
import { startRegistry, type TestRegistry } from '../../harness/registry.ts'

const MAIN = fileURLToPath(new URL('../../../src/cli/main.ts', import.meta.url))
const MiB = 1024 * 1024

/** Runs the real CLI and returns what it printed. */
async function cli(args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    timeout: 120_000
  })
  return stdout
}

/** A blob through the agent's socket: `GET /v1/blobs/<digest>?ref=`, whole. */
function getBlob(a: ExampleAgent, digest: string, ref: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: a.socket, path: `/v1/blobs/${digest}?ref=${ref}` }, (res) => {
      const parts: Buffer[] = []
      res.on('data', (d: Buffer) => parts.push(d))
      res.on('end', () => {
        const body = Buffer.concat(parts)
        if (res.statusCode !== 200) reject(new Error(`HTTP ${res.statusCode}: ${body.toString()}`))
        else resolve(body)
      })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

async function pull(a: ExampleAgent, reference: string): Promise<PullEvent> {
  let last: PullEvent | undefined
  for await (const e of streamAgent<PullEvent>(a.socket, '/v1/pull', { reference })) last = e
  assert.equal(last?.type, 'done', JSON.stringify(last))
  return last as PullEvent
}

const errorsIn = (logs: LogLine[]) => logs.filter((l) => l.level >= 50)

// The daemon's lifecycle on real agent processes started from deploy/shoal.example.yaml: health,
// readiness and metrics; SIGHUP reloads; pins across restarts and gc; SIGTERM drains while a
// peer fetches over real libp2p; the real docker-registry as the seed.
describe('the agent as a daemon (real processes, the example config)', { timeout: 300_000 }, () => {
  let dir: string
  let keyFile: string
  let registry: TestRegistry
  let random: PushedImage
  let tiny: PushedImage
  const agents: ExampleAgent[] = []
  /** The store of the seed that drained, holding the `random` image, for the next seed. */
  let seedStore: string | undefined
  const start = async (init: Parameters<typeof startExampleAgent>[0]) => {
    const a = await startExampleAgent(init)
    agents.push(a)
    return a
  }
  const registries = () => ({ [registry.host]: { url: registry.url } })
  /** `registry/repository` of an image, for `?ref=`. */
  const repoOf = (image: PushedImage) => `${image.registryHost}/${image.repository}`

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sh-daemon-'))
    keyFile = join(dir, 'swarm.key')
    await writeFile(keyFile, generateSwarmKey(), { mode: 0o600 })
    const images = await buildTestImages()
    registry = await startRegistry()
    const pushed = await pushTestImages(registry.host, images, ['random', 'tiny'])
    random = pushed.random as PushedImage
    tiny = pushed.tiny as PushedImage
    assert.ok(random && tiny)
    assert.equal(random.layers.length, 1)
  })
  after(async () => {
    for (const a of agents) await removeExampleAgent(a)
    await registry?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('answers liveness, readiness and metrics; SIGHUP applies a new rate cap, refuses a broken file', async (t) => {
    const a = await start({ overrides: { registries: registries() } })
    const layer = random.layers[0]!
    const health = await fetch(`http://${a.mirror}/healthz`)
    assert.equal(health.status, 200)
    const ready = await a.readyz()
    assert.equal(ready.status, 200)
    assert.deepEqual(ready.body, {
      ready: true,
      store: 'open',
      dht: 'disabled',
      routingTable: 0,
      draining: false
    })
    assert.deepEqual(await callAgent(a.socket, 'GET', '/readyz'), ready.body)

    // Without a cap the blob comes at loopback speed.
    let began = performance.now()
    assert.equal(digestOf(await getBlob(a, layer.digest, repoOf(random))), layer.digest)
    const uncappedMs = performance.now() - began

    const metrics = await a.metrics()
    for (const name of [
      'shoal_ready 1',
      'shoal_draining 0',
      'shoal_upload_sessions 0',
      'shoal_store_pinned_bytes 0',
      `shoal_store_used_bytes ${layer.size}`,
      'shoal_store_quota_bytes 21474836480',
      `shoal_fetched_bytes_total{source="registry"} ${layer.size}`,
      'shoal_blobs_completed_total 1',
      '# TYPE shoal_config_reloads_total counter',
      '# TYPE shoal_store_evicted_bytes_total counter',
      '# TYPE shoal_swarm_peers gauge',
      '# TYPE shoal_process_cpu_seconds_total counter'
    ]) {
      assert.ok(metrics.includes(name), `metrics lack ${name}`)
    }

    // A cap of 8 MiB/s (one second's burst) and debug logs; the mirror's prefetch needs a restart.
    const next = structuredClone(a.config) as {
      fetch: Record<string, unknown>
      log: Record<string, unknown>
      mirror: Record<string, unknown>
      store: Record<string, unknown>
    }
    next.fetch.downloadRate = '8MiB'
    next.log.level = 'debug'
    next.mirror.prefetch = false
    await a.writeConfig(next)
    const logged = a.logs().length
    const reloaded = await a.reload()
    assert.equal(reloaded.msg, 'configuration reloaded')
    assert.deepEqual(reloaded.applied, ['fetch.downloadRate', 'log.level'])
    assert.deepEqual(reloaded.restart, ['mirror.prefetch'])

    const gc = await callAgent<EvictResult>(a.socket, 'POST', '/v1/gc', {})
    assert.deepEqual(
      gc.evicted.map((e) => e.digest),
      [layer.digest]
    )
    began = performance.now()
    assert.equal(digestOf(await getBlob(a, layer.digest, repoOf(random))), layer.digest)
    const cappedMs = performance.now() - began
    // 33 MiB at 8 MiB/s after a burst of 8 MiB: at least 3 s.
    const floorMs = ((layer.size - 8 * MiB) / (8 * MiB)) * 1000
    assert.ok(cappedMs >= floorMs * 0.95, `capped fetch took ${cappedMs} ms, uncapped ${uncappedMs} ms`)
    t.diagnostic(
      `layer of ${layer.size} B: ${uncappedMs.toFixed(0)} ms uncapped, ${cappedMs.toFixed(0)} ms at 8 MiB/s`
    )
    await a.metrics()
    assert.ok(
      a
        .logs()
        .slice(logged)
        .some((l) => l.level === 20),
      'debug lines after the reload'
    )

    // A broken file: refused with a typed error, the agent runs on with what it had.
    await a.writeConfig('store: [\n')
    const refused = await a.reload()
    assert.equal(refused.level, 50)
    assert.equal(refused.code, 'CONFIG_INVALID')
    assert.match(refused.msg, /refused/)
    assert.equal((await a.readyz()).status, 200)
    assert.equal((await a.status()).store.completeBlobs, 1)

    // A lower quota evicts down to it at once.
    next.store.quota = '1MiB'
    await a.writeConfig(next)
    const lowered = await a.reload()
    assert.deepEqual(lowered.applied, ['store.quota'])
    const s = await a.status()
    assert.equal(s.store.usedBytes, 0)
    assert.equal(s.store.quotaBytes, MiB)
    const after = await a.metrics()
    assert.match(after, /shoal_config_reloads_total\{outcome="applied"\} 2/)
    assert.match(after, /shoal_config_reloads_total\{outcome="rejected"\} 1/)
    assert.ok(after.includes(`shoal_store_evicted_bytes_total{reason="quota"} ${layer.size}`))
    assert.ok(after.includes(`shoal_store_evicted_bytes_total{reason="gc"} ${layer.size}`))

    assert.equal(await a.stop(), 0)
    assert.deepEqual(
      errorsIn(a.logs()).map((l) => l.msg),
      ['configuration reload refused: the running one stays']
    )
  })

  it('pins survive a restart and gc; unpinned blobs go, and unpinning lets the rest go', async () => {
    const first = await start({ overrides: { registries: registries() } })
    const pinned = JSON.parse(await cli(['pin', random.ref, '--socket', first.socket, '--json'])) as {
      name: string
      digests: string[]
    }
    assert.equal(pinned.name, random.ref)
    const randomBlobs = [random.manifestDigest, random.config.digest, random.layers[0]!.digest]
    assert.deepEqual([...pinned.digests].sort(), [...randomBlobs].sort())
    await pull(first, tiny.ref)
    const tinyBlobs = [tiny.manifestDigest, tiny.config.digest, ...tiny.layers.map((l) => l.digest)]
    assert.equal(await first.stop(), 0)

    const again = await start({ storeDir: first.storeDir, overrides: { registries: registries() } })
    const s = await again.status()
    assert.deepEqual(
      s.pins?.map((p) => [p.name, p.digests.length]),
      [[random.ref, 3]]
    )
    assert.equal(s.store.completeBlobs, randomBlobs.length + tinyBlobs.length)
    const gc = JSON.parse(await cli(['gc', '--socket', again.socket, '--json'])) as EvictResult
    assert.deepEqual(gc.evicted.map((e) => e.digest).sort(), [...tinyBlobs].sort())
    // The pinned layer is still held: it comes from the store, not the registry.
    registry.resetCounters()
    const layer = random.layers[0]!
    assert.equal(digestOf(await getBlob(again, layer.digest, repoOf(random))), layer.digest)
    assert.equal(registry.bytesServed(layer.digest), 0)
    assert.match(await again.metrics(), new RegExp(`shoal_store_pinned_bytes ${gc.usage.usedBytes}`))

    assert.match(await cli(['unpin', random.ref, '--socket', again.socket]), /^unpinned /)
    const rest = await callAgent<EvictResult>(again.socket, 'POST', '/v1/gc', {})
    assert.deepEqual(rest.evicted.map((e) => e.digest).sort(), [...randomBlobs].sort())
    await assert.rejects(callAgent(again.socket, 'POST', '/v1/unpin', { target: random.ref }), {
      code: 'NOT_PINNED'
    })
    assert.equal(await again.stop(), 0)
    assert.deepEqual(errorsIn([...first.logs(), ...again.logs()]), [])
  })

  it('is not ready while its swarm has peers to find and has found none, nor once drained', async () => {
    const ghost = (await loadOrCreatePrivateKey(join(dir, 'ghost.key'))).publicKey.toString()
    const a = await start({
      overrides: {
        registries: registries(),
        swarm: { enabled: true, keyFile, bootstrap: [`/ip4/127.0.0.1/tcp/1/p2p/${ghost}`] }
      }
    })
    const r = await a.readyz()
    assert.equal(r.status, 503)
    assert.deepEqual(r.body, {
      ready: false,
      store: 'open',
      dht: 'no-peers',
      routingTable: 0,
      draining: false
    })
    assert.equal((await fetch(`http://${a.mirror}/healthz`)).status, 200)
    assert.match(await a.metrics(), /^shoal_ready 0$/m)
    // `shoal drain` leaves it running, draining: still alive, still not ready, and it says so.
    assert.match(
      await cli(['drain', '--timeout', '1s', '--socket', a.socket]),
      /^drained: .*every upload finished/
    )
    const drained = await a.readyz()
    assert.equal(drained.status, 503)
    assert.equal(drained.body.draining, true)
    assert.equal((await a.status()).draining, true)
    assert.match(await a.metrics(), /^shoal_draining 1$/m)
    assert.equal(await a.stop(), 0)
  })

  /** A seed holding the `random` image and a fetcher bootstrapped to it, both ready. */
  const seedAndFetcher = async (swarm: Record<string, unknown>, drainTimeout: string, storeDir?: string) => {
    const seed = await start({
      ...(storeDir !== undefined && { storeDir }),
      overrides: {
        registries: registries(),
        swarm: { enabled: true, keyFile, ...swarm },
        shutdown: { drainTimeout }
      }
    })
    const r = await seed.readyz()
    assert.equal(r.status, 200)
    // A fresh seed has no peer and none to find; a restarted one may meet its old peers again.
    if (storeDir === undefined) assert.equal(r.body.dht, 'standalone')
    if (storeDir === undefined) await pull(seed, random.ref)
    const bootstrap = (await seed.status()).swarm?.addresses ?? []
    const fetcher = await start({
      overrides: { registries: registries(), swarm: { enabled: true, keyFile, bootstrap } }
    })
    await until('the fetcher is ready with a peer in its DHT', async () => {
      const f = await fetcher.readyz()
      return f.status === 200 && f.body.dht === 'ok'
    })
    return { seed, fetcher }
  }

  /**
   * Starts the fetch of the layer on `fetcher` and waits until `seed` has sent a piece of it;
   * returns the fetch in flight (wrapped: an async function would wait for a returned promise).
   */
  const fetchWhileUploading = async (seed: ExampleAgent, fetcher: ExampleAgent) => {
    const layer = random.layers[0]!
    registry.resetCounters()
    const body = getBlob(fetcher, layer.digest, repoOf(random))
    body.catch(() => undefined)
    await until('the seed uploads the layer', async () => {
      const uploads = (await seed.status()).swarm?.uploads ?? []
      return uploads.some((u) => u.digest === layer.digest && u.piecesServed > 0)
    })
    return { body }
  }

  it('drains on SIGTERM while a peer fetches from it: the upload finishes, then it exits 0', async (t) => {
    const layer = random.layers[0]!
    const { seed, fetcher } = await seedAndFetcher({ uploadRate: '4MiB' }, '60s')
    seedStore = seed.storeDir
    const st = JSON.parse(await cli(['status', '--json', '--socket', fetcher.socket])) as {
      swarm: { peers: number; peerList: { peerId: string }[] }
      store: { usedBytes: number; quotaBytes: number }
    }
    const seedId = (await seed.status()).swarm?.peerId
    assert.ok(st.swarm.peers >= 1)
    assert.ok(st.swarm.peerList.some((p) => p.peerId === seedId))
    assert.equal(st.store.quotaBytes, 20 * 1024 * MiB)
    assert.equal(typeof st.store.usedBytes, 'number')

    const { body } = await fetchWhileUploading(seed, fetcher)
    seed.signal('SIGTERM')
    // Draining: not ready, nothing announced, the upload still running.
    await until('the seed reports draining', async () => (await seed.readyz()).body.draining).catch((err) => {
      console.error(seed.output())
      throw err
    })
    const during = await seed.status()
    assert.equal(during.swarm?.announced, 0)
    assert.equal((await seed.readyz()).status, 503)
    assert.equal(during.swarm?.uploads?.length, 1)

    assert.equal(digestOf(await body), layer.digest)
    assert.equal(await seed.exited, 0)
    // Every byte came from the draining seed; none from the registry.
    assert.equal(registry.bytesServed(layer.digest), 0)
    assert.ok(((await fetcher.status()).bytes.fetched.peer ?? 0) >= layer.size)
    const logs = seed.logs()
    assert.deepEqual(errorsIn(logs), [])
    const drained = logs.find((l) => l.msg === 'drained')
    assert.equal(drained?.uploadsLeft, 0, seed.output())
    t.diagnostic(`the drain waited ${drained?.waitedMs} ms for the upload to finish`)
    assert.ok(logs.some((l) => l.msg === 'agent stopped'))
    // The fetcher, which holds the layer now, leaves too: the next seed is the only peer.
    assert.equal(await fetcher.stop(), 0)
    assert.deepEqual(errorsIn(fetcher.logs()), [])
  })

  it('a drain that times out cuts the upload: the peer finishes from the registry, the agent exits 0', async (t) => {
    const layer = random.layers[0]!
    assert.ok(seedStore, 'the seed of the previous test holds the image')
    const { seed, fetcher } = await seedAndFetcher({ uploadRate: '2MiB' }, '1s', seedStore)
    const { body } = await fetchWhileUploading(seed, fetcher)
    const stopped = performance.now()
    seed.signal('SIGTERM')
    assert.equal(await seed.exited, 0)
    const stopMs = performance.now() - stopped
    assert.ok(stopMs < 15_000, 'the drain timeout bounds the stop')
    assert.equal(digestOf(await body), layer.digest)
    const fetched = (await fetcher.status()).bytes.fetched
    assert.ok((fetched.peer ?? 0) > 0, JSON.stringify(fetched))
    assert.ok(registry.bytesServed(layer.digest) > 0, 'the rest came from the registry')
    const logs = seed.logs()
    assert.deepEqual(errorsIn(logs), [])
    const cut = logs.find((l) => /^drain timeout/.test(l.msg))
    assert.equal(cut?.uploadsLeft, 1, seed.output())
    t.diagnostic(
      `SIGTERM to exit ${stopMs.toFixed(0)} ms (drain 1 s); layer bytes from the seed ${fetched.peer}, from the registry ${registry.bytesServed(layer.digest)}`
    )
  })
})
