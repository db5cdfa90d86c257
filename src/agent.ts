import { join } from 'node:path'
import type { Logger } from 'pino'
import { ShoalMetrics } from './api/metrics.ts'
import { RegistryMirror } from './api/mirror.ts'
import { SocketApi } from './api/socket-api.ts'
import { systemClock } from './clock.ts'
import type { ShoalConfig } from './config/schema.ts'
import { ConfigInvalidError } from './errors.ts'
import { BlobFetcher } from './fetch/blob-fetcher.ts'
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
import { StaticUpstreamResolver } from './registry/upstream-resolver.ts'
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
  readonly config: ShoalConfig
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
  readonly #log: Logger
  #started = false

  constructor(components: AgentComponents, config: ShoalConfig) {
    this.config = config
    const clock = components.clock ?? systemClock
    const logger = components.logger
    this.#log = logger.child({ component: 'agent' })
    this.store = new LevelBlobStore(
      { clock, logger },
      {
        root: join(config.storeDir),
        quotaBytes: config.store.quota,
        // An evicted blob is no longer offered to the swarm.
        onEvict: (digest) => this.swarm?.peers.withdraw(digest)
      }
    )
    this.upstreams = new StaticUpstreamResolver(
      { logger },
      {
        registries: config.registries,
        connectTimeoutMs: config.upstream.connectTimeout,
        responseTimeoutMs: config.upstream.responseTimeout,
        bodyTimeoutMs: config.upstream.bodyTimeout,
        retries: config.upstream.retries
      }
    )
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
        ...(config.fetch.downloadRate !== undefined && {
          download: new TokenBucket(config.fetch.downloadRate)
        })
      }
    )
    this.manifests = new ManifestResolver({ store: this.store, upstreams: this.upstreams, logger })
    this.puller = new ImagePuller(
      { manifests: this.manifests, fetcher: this.fetcher, clock, logger },
      { platform: config.platform ? parsePlatform(config.platform) : undefined }
    )
    this.materializer = createMaterializer(config, { store: this.store, logger })
    const api = {
      store: this.store,
      fetcher: this.fetcher,
      manifests: this.manifests,
      logger,
      metrics: this.metrics
    }
    this.socket = new SocketApi(
      { ...api, puller: this.puller, materializer: this.materializer, clock },
      { path: config.socket.path, mode: config.socket.mode, describe: () => this.describe() }
    )
    this.mirror = config.mirror.enabled
      ? new RegistryMirror(
          { ...api, upstreams: this.upstreams },
          {
            listen: config.mirror.listen,
            defaultRegistry: config.mirror.defaultRegistry,
            prefetch: config.mirror.prefetch
          }
        )
      : undefined
  }

  /** Identity and addresses, for `shoal status`. */
  describe(): Record<string, unknown> {
    return {
      version: VERSION,
      pid: process.pid,
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
    this.metrics.onScrape = () => this.#refreshStoreGauges()
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

  #refreshStoreGauges(): void {
    const u = this.store.usage()
    this.metrics.storeUsedBytes.set(u.usedBytes)
    this.metrics.storeBlobs.set({ state: 'complete' }, u.completeBlobs)
    this.metrics.storeBlobs.set({ state: 'partial' }, u.blobs - u.completeBlobs)
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
