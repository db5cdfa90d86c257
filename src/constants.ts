/** Defaults and units. Every default here is documented in the README's configuration table. */

export const KiB = 1024
export const MiB = 1024 * KiB
export const GiB = 1024 * MiB
export const second = 1000
export const minute = 60 * second

/** Default piece size: the unit of request, verification and sharing. */
export const DEFAULT_PIECE_SIZE = 4 * MiB
/** Smallest and largest piece size a piece list may declare. */
export const MIN_PIECE_SIZE = 64 * KiB
export const MAX_PIECE_SIZE = 64 * MiB
/** Largest blob Shoal accepts from a descriptor (guards against absurd sizes). */
export const MAX_BLOB_SIZE = 1024 * GiB
/** Largest manifest or index Shoal parses (distribution's own limit is 4 MiB). */
export const MAX_MANIFEST_SIZE = 4 * MiB

/** Default disk quota of the store. */
export const DEFAULT_STORE_QUOTA = 20 * GiB
/** Parallel piece requests per blob to the seed registry. */
export const DEFAULT_REGISTRY_PIECE_CONCURRENCY = 4
/** Cap on concurrent Range streams to the seed registry across all blobs. */
export const DEFAULT_REGISTRY_STREAMS = 8
/** Time the upstream gets to start answering (headers) before the request fails. */
export const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT = 10 * second
/** Time allowed to open a connection to the upstream. */
export const DEFAULT_UPSTREAM_CONNECT_TIMEOUT = 3 * second
/** Time a body may stall (no bytes) before the transfer is cut. */
export const DEFAULT_UPSTREAM_BODY_TIMEOUT = 15 * second
/** Retries of one upstream request (5xx, 429, resets), with exponential backoff and jitter. */
export const DEFAULT_UPSTREAM_RETRIES = 3
/**
 * How long a stopping agent lets uploads to peers finish (`shutdown.drainTimeout`): below
 * Kubernetes' default grace period of 30 s, leaving time to close everything after.
 */
export const DEFAULT_DRAIN_TIMEOUT = 20 * second
/** Default localhost registry mirror address. */
export const DEFAULT_MIRROR_LISTEN = '127.0.0.1:5050'

/** Thin pool name when none is configured. */
export const DEFAULT_LVM_POOL = 'shoal-pool'
/** Share of the volume group a new thin pool takes (the rest: metadata spare, growth). */
export const DEFAULT_LVM_POOL_SIZE = '95%FREE'
/** Virtual size of each image's volumes: the most an image (plus a container's writes) holds. */
export const DEFAULT_LVM_VOLUME_SIZE = '10G'

/** How long a peer's `fetching` claim keeps other nodes off a piece (renewed while it runs). */
export const DEFAULT_CLAIM_TTL_MS = 15_000
/**
 * Without progress for this long, a transfer may take any unclaimed piece from the registry. 60 s: in the model a 1,000-node crowd loses patience at 30 s
 * before the first pieces reach it, and the registry sends 7 F (decision 12).
 */
export const DEFAULT_SWARM_PATIENCE_MS = 60_000
/**
 * Members of a blob's swarm that take its pieces from the registry (see
 * `assignRegistryPieces`, decision 12): few, so the registry sends one piece after another.
 */
export const DEFAULT_REGISTRY_FETCHERS = 4
/** How long a transfer leaves a peer alone after it answered `PIECE_BUSY`, before asking again. */
export const BUSY_BACKOFF_MS = 100
/** Pieces a node uploads at once (decision 12): a fresh piece doubles instead of trickling to all. */
export const DEFAULT_CONCURRENT_UPLOADS = 2
/** Whether a node with nothing to ask of peers takes any unclaimed piece (decision 12: no). */
export const DEFAULT_STARVING_TAKES_ANY = false
