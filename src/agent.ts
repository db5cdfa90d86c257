import { join } from 'node:path'
import type { Logger } from 'pino'
import { DaemonRoutes, type DrainResult } from './api/daemon-routes.ts'
import type { Readiness } from './api/health.ts'
import { ShoalMetrics } from './api/metrics.ts'
import { RegistryMirror } from './api/mirror.ts'
import { SocketApi } from './api/socket-api.ts'
import { systemClock } from './clock.ts'
import { planReload, type ReloadPlan } from './config/reload-plan.ts'
import type { ShoalConfig } from './config/schema.ts'
import { ConfigInvalidError } from './errors.ts'
import { BlobFetcher } from './fetch/blob-fetcher.ts'
import { ImagePins } from './fetch/image-pins.ts'
import { ImagePuller } from './fetch/image-puller.ts'
import { ManifestResolver } from './fetch/manifests.ts'
import { TokenBucket } from './fetch/token-bucket.ts'
import type { Clock } from './interface/clock.ts'
import type { Startable } from './interface/common.ts'
import type { Materializer, MaterializerDriver } from './interface/materializer.ts'
import type { BlobStore } from './interface/store.ts'
import { assertDeviceMapper } from './materialize/device-mapper.ts'
import { LocalCacheMaterializer } from './materialize/local-cache.ts'
import { LvmThinMaterializer } from './materialize/lvm-thin.ts'
import { parsePlatform } from './oci/platform.ts'
import { StaticUpstreamResolver, type StaticUpstreamResolverInit } from './registry/upstream-resolver.ts'
import { LevelBlobStore } from './store/level-blob-store.ts'
import { Swarm } from './swarm.ts'

/** The package version, shown by `shoal status`. */
export const VERSION = '0.1.0'

/** What every materializer is built from. */
interface MaterializerParts {
  store: BlobStore
  logger: Logger
  /** `materialize.dir`, or `<storeDir>/materialize`. */
  dir: string
  config: ShoalConfig['materialize']
}

/** One `materialize.driver`: how to build it, and what the host must have for it. */
interface MaterializerEntry {
  create(parts: MaterializerParts): Materializer
  /** Runs first in `start()`: throws a typed error when this host cannot run the driver. */
  preflight?(): Promise<void>
}

/** The materializers this agent can run, by `materialize.driver`. */
const MATERIALIZERS: Record<MaterializerDriver, MaterializerEntry> = {
  'local-cache': {
    create: ({ store, logger, dir }) => new LocalCacheMaterializer({ store, logger }, { dir })
  },
  'lvm-thin': {
    create: ({ store, logger, dir, config }) => {
      const lvm = config.lvm
      // The schema refuses lvm-thin without materialize.lvm; this keeps the types honest.
      if (!lvm) throw new ConfigInvalidError('materialize.driver lvm-thin needs materialize.lvm.volumeGroup')
      return new LvmThinMaterializer(
        { store, logger },
        {
          vg: lvm.volumeGroup,
          pool: lvm.pool,
          device: lvm.device,
          poolSize: lvm.poolSize,
          volumeSize: lvm.volumeSize,
          fstype: lvm.fstype,
          // Volumes are mounted only while a layer is applied on them.
          mountDir: join(dir, 'mnt')
        }
      )
    },
    preflight: () => assertDeviceMapper()
  }
}

export interface AgentComponents {
  logger: Logger
  clock?: Clock
}

/**
 * The composition root: the one place that constructs and wires Shoal's components. Start
 * order is store, fetch, then the listeners; stop runs in reverse so in-flight requests finish
 * against a live store.
 */
export class Agent implements Startable {
  readonly metrics = new ShoalMetrics()
  readonly store: LevelBlobStore
  readonly upstreams: StaticUpstreamResolver
  readonly fetcher: BlobFetcher
  readonly manifests: ManifestResolver
  readonly puller: ImagePuller
  /** Lays out pulled images for mounting, as `materialize.driver` says. */
  readonly materializer: Materializer
  readonly socket: SocketApi
  readonly mirror: RegistryMirror | undefined
  /** The swarm side (libp2p node, DHT, piece protocol) when `swarm.enabled`. */
  readonly swarm: Swarm | undefined
  /** Pins images and blobs under names (`shoal pin`). */
  readonly pins: ImagePins
  /** Paces downloads from peers and seeds; its rate changes on a reload (`fetch.downloadRate`). */
  readonly download: TokenBucket
  readonly #log: Logger
  /** The root logger: its level is every component's (their children inherit it). */
  readonly #root: Logger
  readonly #clock: Clock
  #config: ShoalConfig
  #started = false
  #draining = false

  constructor(components: AgentComponents, config: ShoalConfig) {
    this.#config = config
    const clock = components.clock ?? systemClock
    this.#clock = clock
    const logger = components.logger
    this.#root = logger
    this.#log = logger.child({ component: 'agent' })
    this.download = new TokenBucket(config.fetch.downloadRate)
    this.store = new LevelBlobStore(
      { clock, logger },
      {
        root: join(config.storeDir),
        quotaBytes: config.store.quota,
        // An evicted blob is no longer offered to the swarm.
        onEvict: (digest) => this.swarm?.peers.withdraw(digest)
      }
    )
    this.upstreams = new StaticUpstreamResolver({ logger }, upstreamInit(config))
    this.swarm = config.swarm.enabled
      ? new Swarm(
          { store: this.store, logger, metrics: this.metrics },
          { ...config.swarm, storeDir: config.storeDir }
        )
      : undefined
    this.fetcher = new BlobFetcher(
      {
        store: this.store,
        upstreams: this.upstreams,
        clock,
        logger,
        metrics: this.metrics,
        ...(this.swarm && { peers: this.swarm.peers })
      },
      {
        pieceSize: config.store.pieceSize,
        registryConcurrency: config.fetch.registryConcurrency,
        registryStreams: config.fetch.registryStreams,
        download: this.download,
        registryFetchers: config.swarm.registryFetchers,
        starvingTakesAny: config.swarm.starvingTakesAny
      }
    )
    this.manifests = new ManifestResolver({ store: this.store, upstreams: this.upstreams, logger })
    this.puller = new ImagePuller(
      { manifests: this.manifests, fetcher: this.fetcher, clock, logger },
      { platform: config.platform ? parsePlatform(config.platform) : undefined }
    )
    this.materializer = createMaterializer(config, { store: this.store, logger })
    this.pins = new ImagePins({ store: this.store, puller: this.puller, logger })
    const api = {
      store: this.store,
      fetcher: this.fetcher,
      manifests: this.manifests,
      logger,
      metrics: this.metrics
    }
    const daemon = new DaemonRoutes(
      { store: this.store, pins: this.pins, logger, metrics: this.metrics },
      { drain: (o) => this.drain(o), drainTimeoutMs: config.shutdown.drainTimeout }
    )
    const readiness = () => this.readiness()
    this.socket = new SocketApi(
      { ...api, puller: this.puller, materializer: this.materializer, clock, daemon },
      {
        path: config.socket.path,
        mode: config.socket.mode,
        readiness,
        describe: async () => ({ ...this.describe(), ready: readiness(), pins: await this.pins.list() })
      }
    )
    this.mirror = config.mirror.enabled
      ? new RegistryMirror(
          { ...api, upstreams: this.upstreams },
          {
            listen: config.mirror.listen,
            defaultRegistry: config.mirror.defaultRegistry,
            prefetch: config.mirror.prefetch,
            readiness
          }
        )
      : undefined
  }

  /** The configuration the agent runs with (a reload changes its live keys). */
  get config(): ShoalConfig {
    return this.#config
  }

  /** Identity and addresses, for `shoal status`. */
  describe(): Record<string, unknown> {
    return {
      version: VERSION,
      pid: process.pid,
      draining: this.#draining,
      socket: this.config.socket.path,
      mirror: this.mirror?.address ?? null,
      storeDir: this.config.storeDir,
      materialize: { driver: this.materializer.driver, dir: materializeDir(this.config) },
      swarm: this.swarm?.describe() ?? null,
      memory: process.memoryUsage()
    }
  }

  async start(): Promise<void> {
    if (this.#started) return
    // Before anything opens: an agent that cannot lay images out does not start at all.
    await MATERIALIZERS[this.config.materialize.driver].preflight?.()
    await this.store.start()
    await this.swarm?.start()
    this.metrics.onScrape = () => this.#refreshGauges()
    this.metrics.storeQuotaBytes.set(this.config.store.quota)
    await this.fetcher.start()
    await this.materializer.start()
    await this.socket.start()
    await this.mirror?.start()
    this.#started = true
    this.#log.info(this.describe(), 'agent started')
  }

  async stop(): Promise<void> {
    if (!this.#started) return
    this.#started = false
    await this.mirror?.stop()
    await this.socket.stop()
    await this.materializer.stop()
    await this.fetcher.stop()
    await this.swarm?.stop()
    await this.upstreams.close()
    await this.store.stop()
    this.#log.info('agent stopped')
  }

  /**
   * Whether the agent can do its work (see `Readiness`): started, store open, DHT usable (a
   * peer in the routing table, or none to find), not draining.
   */
  readiness(): Readiness {
    let store: Readiness['store'] = 'open'
    try {
      this.store.usage()
    } catch {
      store = 'closed'
    }
    const swarm = this.swarm
    const routingTable = swarm?.routingTableSize() ?? 0
    const dht: Readiness['dht'] =
      swarm === undefined
        ? 'disabled'
        : routingTable > 0
          ? 'ok'
          : swarm.standalone
            ? 'standalone'
            : 'no-peers'
    const ready = this.#started && store === 'open' && dht !== 'no-peers' && !this.#draining
    this.metrics.ready.set(ready ? 1 : 0)
    return { ready, store, dht, routingTable, draining: this.#draining }
  }

  /**
   * Stops advertising and sends new peers elsewhere (`PEER_DRAINING`), then waits up to
   * `timeoutMs` for the uploads in flight to end. The agent keeps serving its runtimes and
   * fetching; only a restart undoes a drain. Idempotent: a second drain waits again.
   */
  async drain(options: { timeoutMs: number }): Promise<DrainResult> {
    const started = this.#clock.now()
    if (!this.#draining) this.#log.info({ timeoutMs: options.timeoutMs }, 'draining')
    this.#draining = true
    this.metrics.draining.set(1)
    this.metrics.ready.set(0)
    const r = (await this.swarm?.drain({ signal: AbortSignal.timeout(options.timeoutMs) })) ?? {
      withdrawn: 0,
      uploadsLeft: 0
    }
    const result = { ...r, waitedMs: this.#clock.now() - started }
    if (r.uploadsLeft > 0) this.#log.warn(result, 'drain timeout: uploads still running are cut')
    else this.#log.info(result, 'drained')
    return result
  }

  /**
   * Applies a newly loaded configuration: its live keys (`LIVE_KEYS`: log level, rate caps,
   * store quota, registries and upstream timeouts) at once, a lower quota by evicting down to
   * it; every other changed key waits for a restart. Returns the plan, for the log.
   */
  async reconfigure(next: ShoalConfig): Promise<ReloadPlan> {
    const plan = planReload(this.#config, next)
    const c = plan.config
    const changed = (key: string) => plan.applied.some((k) => k === key || k.startsWith(`${key}.`))
    if (changed('log.level')) this.#root.level = c.log.level
    if (changed('fetch.downloadRate')) this.download.setRate(c.fetch.downloadRate)
    if (changed('swarm.uploadRate')) this.swarm?.upload.setRate(c.swarm.uploadRate)
    if (changed('registries') || changed('upstream')) this.upstreams.reconfigure(upstreamInit(c))
    this.#config = c
    if (changed('store.quota')) {
      this.store.setQuota(c.store.quota)
      this.metrics.storeQuotaBytes.set(c.store.quota)
      if (this.store.usage().usedBytes > c.store.quota) {
        const r = await this.store.evict({ targetBytes: c.store.quota })
        this.metrics.evictedBytes.inc({ reason: 'quota' }, r.freedBytes)
        this.#log.info({ blobs: r.evicted.length, freedBytes: r.freedBytes }, 'evicted down to the new quota')
      }
    }
    return plan
  }

  async #refreshGauges(): Promise<void> {
    const u = this.store.usage()
    this.metrics.storeUsedBytes.set(u.usedBytes)
    this.metrics.storeBlobs.set({ state: 'complete' }, u.completeBlobs)
    this.metrics.storeBlobs.set({ state: 'partial' }, u.blobs - u.completeBlobs)
    let pinned = 0
    for (const b of await this.store.list()) if (b.pinned) pinned += b.size
    this.metrics.storePinnedBytes.set(pinned)
    this.metrics.uploadSessions.set(this.swarm?.activeUploads ?? 0)
    this.metrics.draining.set(this.#draining ? 1 : 0)
    this.readiness()
  }
}

function upstreamInit(config: ShoalConfig): StaticUpstreamResolverInit {
  return {
    registries: config.registries,
    connectTimeoutMs: config.upstream.connectTimeout,
    responseTimeoutMs: config.upstream.responseTimeout,
    bodyTimeoutMs: config.upstream.bodyTimeout,
    retries: config.upstream.retries
  }
}

function materializeDir(config: ShoalConfig): string {
  return config.materialize.dir ?? join(config.storeDir, 'materialize')
}

/** The materializer `materialize.driver` names. */
function createMaterializer(
  config: ShoalConfig,
  parts: Omit<MaterializerParts, 'dir' | 'config'>
): Materializer {
  const entry = MATERIALIZERS[config.materialize.driver]
  return entry.create({ ...parts, dir: materializeDir(config), config: config.materialize })
}
