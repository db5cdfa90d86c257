import { z } from 'zod'
import {
  DEFAULT_CONCURRENT_UPLOADS,
  DEFAULT_DRAIN_TIMEOUT,
  DEFAULT_LVM_POOL,
  DEFAULT_LVM_POOL_SIZE,
  DEFAULT_LVM_VOLUME_SIZE,
  DEFAULT_MIRROR_LISTEN,
  DEFAULT_PIECE_SIZE,
  DEFAULT_REGISTRY_FETCHERS,
  DEFAULT_REGISTRY_PIECE_CONCURRENCY,
  DEFAULT_REGISTRY_STREAMS,
  DEFAULT_STARVING_TAKES_ANY,
  DEFAULT_STORE_QUOTA,
  DEFAULT_UPSTREAM_BODY_TIMEOUT,
  DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
  DEFAULT_UPSTREAM_RESPONSE_TIMEOUT,
  DEFAULT_UPSTREAM_RETRIES,
  MAX_PIECE_SIZE,
  MIN_PIECE_SIZE,
  second
} from '../constants.ts'
import { DEFAULT_DNS_DISCOVERY_INTERVAL } from '../p2p/dns-discovery.ts'
import { parseDuration, parseSize } from './units.ts'

const size = () =>
  z.union([z.string(), z.number()]).transform((v, ctx) => {
    const n = parseSize(v)
    if (n === undefined) {
      ctx.addIssue({ code: 'custom', message: `"${v}" is not a size (e.g. 20GiB, 4MiB, 1048576)` })
      return z.NEVER
    }
    return n
  })

const duration = () =>
  z.union([z.string(), z.number()]).transform((v, ctx) => {
    const n = parseDuration(v)
    if (n === undefined) {
      ctx.addIssue({ code: 'custom', message: `"${v}" is not a duration (e.g. 3s, 250ms)` })
      return z.NEVER
    }
    return n
  })

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'must be host:port, e.g. 127.0.0.1:5050')

/** One upstream registry (or OCI layout directory) and its credentials. */
const registrySchema = z
  .strictObject({
    url: z.url({ protocol: /^https?$/ }).optional(),
    layout: z.string().min(1).optional(),
    username: z.string().optional(),
    password: z.string().optional(),
    token: z.string().optional()
  })
  .refine((r) => !(r.url && r.layout), { message: 'give either url or layout, not both' })
  .refine((r) => (r.username === undefined) === (r.password === undefined), {
    message: 'username and password go together'
  })

/** Volume group and thin pool names LVM accepts (no leading hyphen, at most 64 characters). */
const lvmName = (what: string) =>
  z
    .string()
    .regex(
      /^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,63}$/,
      `${what} must be 1-64 letters, digits or + _ . - characters, not starting with -`
    )

/** An LVM size: `20G`, `512M`, `1T` (lvcreate -L), or a share such as `95%FREE` (lvcreate -l). */
const lvmSize = (share: boolean) =>
  z
    .string()
    .regex(
      share ? /^(\d+(\.\d+)?[kKmMgGtT]|\d{1,3}%(FREE|VG))$/ : /^\d+(\.\d+)?[kKmMgGtT]$/,
      share ? 'must be a size such as 20G or a share such as 95%FREE' : 'must be a size such as 10G'
    )

/** The thin pool of the `lvm-thin` materializer (see LvmThinMaterializerInit). */
const lvmSchema = z.strictObject({
  /** The volume group holding the thin pool. */
  volumeGroup: lvmName('materialize.lvm.volumeGroup'),
  /** The thin pool. */
  pool: lvmName('materialize.lvm.pool').default(DEFAULT_LVM_POOL),
  /** A block device to create the volume group and pool on when they do not exist. */
  device: z.string().startsWith('/dev/', 'must be a device path under /dev/').optional(),
  /** Size of a pool created on `device`. */
  poolSize: lvmSize(true).default(DEFAULT_LVM_POOL_SIZE),
  /** Virtual size of each image's volumes. */
  volumeSize: lvmSize(false).default(DEFAULT_LVM_VOLUME_SIZE),
  /** File system of new base volumes. */
  fstype: z.enum(['ext4', 'xfs']).default('ext4')
})

/** The agent's configuration: file, then environment, then flags; every default here. */
export const configSchema = z.strictObject({
  /** Root of the store: LevelDB index and blob data. */
  storeDir: z.string().min(1).default('/var/lib/shoal'),
  store: z
    .strictObject({
      /** Disk quota; least-recently-used blobs that are not pinned or in use are evicted beyond it. */
      quota: size().default(DEFAULT_STORE_QUOTA),
      /** Piece size for blobs this node cuts into pieces. */
      pieceSize: size()
        .refine((n) => n >= MIN_PIECE_SIZE && n <= MAX_PIECE_SIZE, {
          message: `store.pieceSize must be between ${MIN_PIECE_SIZE} and ${MAX_PIECE_SIZE} bytes`
        })
        .default(DEFAULT_PIECE_SIZE)
    })
    .prefault({}),
  socket: z
    .strictObject({
      /** Unix socket of the runtime API. */
      path: z.string().min(1).max(107).default('/run/shoal/shoal.sock'),
      /** File mode of the socket: owner and group only by default. */
      mode: z.number().int().min(0).max(0o777).default(0o660)
    })
    .prefault({}),
  mirror: z
    .strictObject({
      enabled: z.boolean().default(true),
      /** Address of the localhost registry mirror; loopback by default. */
      listen: hostPort.default(DEFAULT_MIRROR_LISTEN),
      /** Upstream for mirror requests that name no registry (no `?ns=`, no host in the path). */
      defaultRegistry: z.string().min(1).default('docker.io'),
      /** Start fetching a manifest's config and layers as soon as the runtime reads the manifest. */
      prefetch: z.boolean().default(true)
    })
    .prefault({}),
  /** Upstream registries by host as it appears in image references. */
  registries: z.record(z.string().min(1), registrySchema).default({}),
  upstream: z
    .strictObject({
      connectTimeout: duration().default(DEFAULT_UPSTREAM_CONNECT_TIMEOUT),
      responseTimeout: duration().default(DEFAULT_UPSTREAM_RESPONSE_TIMEOUT),
      bodyTimeout: duration().default(DEFAULT_UPSTREAM_BODY_TIMEOUT),
      retries: z.number().int().min(0).max(10).default(DEFAULT_UPSTREAM_RETRIES)
    })
    .prefault({}),
  fetch: z
    .strictObject({
      /** Parallel Range requests per blob to the seed registry. */
      registryConcurrency: z.number().int().min(1).max(64).default(DEFAULT_REGISTRY_PIECE_CONCURRENCY),
      /** Cap on concurrent Range requests to seed registries across all blobs. */
      registryStreams: z.number().int().min(1).max(256).default(DEFAULT_REGISTRY_STREAMS),
      /** Cap on the bytes per second this node downloads, from peers and registries (unset: no cap). */
      downloadRate: size().optional()
    })
    .prefault({}),
  swarm: z
    .strictObject({
      /** Join the swarm: fetch blobs from peers and serve them to peers. */
      enabled: z.boolean().default(false),
      /** libp2p listen addresses. */
      listen: z.array(z.string().startsWith('/')).default(['/ip4/0.0.0.0/tcp/4001']),
      /** Peers to join through: multiaddrs ending in `/p2p/<peer id>`. */
      bootstrap: z.array(z.string().startsWith('/')).default([]),
      /** The pre-shared swarm key file (`shoal swarm-key` writes one); every node needs the same. */
      keyFile: z.string().min(1).optional(),
      /** When set, only these peer ids may connect. */
      allowPeers: z.array(z.string().min(1)).optional(),
      /** How long a provider lookup may take before a blob goes to the seed. */
      findTimeout: duration().default(2 * second),
      /** Concurrent piece-protocol sessions this node serves. */
      uploadSlots: z.number().int().min(1).max(1024).default(64),
      /**
       * Pieces this node uploads at once across all sessions; a request beyond gets `PIECE_BUSY`
       * and goes to another holder. See docs/decisions/0012.
       */
      concurrentUploads: z.number().int().min(1).max(1024).default(DEFAULT_CONCURRENT_UPLOADS),
      /** Members of a blob's swarm that take its pieces from the registry. */
      registryFetchers: z.number().int().min(1).max(1024).default(DEFAULT_REGISTRY_FETCHERS),
      /** A node with nothing to ask of peers may take any unclaimed piece from the registry. */
      starvingTakesAny: z.boolean().default(DEFAULT_STARVING_TAKES_ANY),
      /** Cap on the bytes per second this node uploads to peers (unset: no cap). */
      uploadRate: size().optional(),
      /** Dial every address a DNS name resolves to (a Kubernetes headless service). */
      dnsDiscovery: z
        .strictObject({
          /** The name to resolve (A and AAAA records). */
          name: z.string().min(1),
          /** The swarm port of every node behind the name (DNS records carry no port). */
          port: z.number().int().min(1).max(65535),
          /** Time between look-ups. */
          interval: duration()
            .refine((n) => n >= second, { message: 'swarm.dnsDiscovery.interval must be at least 1s' })
            .default(DEFAULT_DNS_DISCOVERY_INTERVAL)
        })
        .optional(),
      /** Find peers on the LAN by multicast DNS (service tag from the protocol prefix). */
      mdns: z.boolean().default(false)
    })
    .prefault({})
    .refine((s) => !s.enabled || s.keyFile !== undefined, {
      message: 'swarm.keyFile is required when the swarm is enabled'
    }),
  materialize: z
    .strictObject({
      /**
       * How images are laid out for mounting: `local-cache` (extracted layer directories for
       * overlayfs) or `lvm-thin` (a thin volume per layer chain; needs `materialize.lvm`).
       */
      driver: z.enum(['local-cache', 'lvm-thin']).default('local-cache'),
      /** Where materialized layers live (unset: `<storeDir>/materialize`). */
      dir: z.string().min(1).optional(),
      /** The thin pool of the `lvm-thin` driver. */
      lvm: lvmSchema.optional()
    })
    .prefault({})
    .superRefine((m, ctx) => {
      if (m.driver === 'lvm-thin' && m.lvm === undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['lvm'],
          message:
            'materialize.driver lvm-thin needs materialize.lvm.volumeGroup (the volume group of the thin pool)'
        })
      }
    }),
  /** Platform picked from image indexes, `os/arch[/variant]`; defaults to this machine's. */
  platform: z
    .string()
    .regex(/^[a-z0-9]+\/[a-z0-9_]+(\/[a-z0-9]+)?$/, 'must be os/arch[/variant], e.g. linux/amd64')
    .optional(),
  log: z
    .strictObject({
      level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info')
    })
    .prefault({}),
  shutdown: z
    .strictObject({
      /**
       * On SIGTERM or SIGINT, how long uploads to peers may run to their end after the agent
       * stopped advertising and refusing new ones; the agent then stops whatever is left.
       */
      drainTimeout: duration().default(DEFAULT_DRAIN_TIMEOUT)
    })
    .prefault({})
})

/** A validated configuration with every default filled in. */
export type ShoalConfig = z.output<typeof configSchema>
/** What a config file, environment and flags may say. */
export type ShoalConfigInput = z.input<typeof configSchema>
