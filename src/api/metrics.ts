import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'

/**
 * Every Prometheus metric the agent exports, with stable names. Components take the pieces
 * they update; `/metrics` renders the registry.
 */
export class ShoalMetrics {
  readonly registry = new Registry()

  /** Verified bytes brought into the store, by where they came from (registry, oci-layout, peer). */
  readonly bytesFetched = new Counter({
    name: 'shoal_fetched_bytes_total',
    help: 'Verified bytes written to the store, by source',
    labelNames: ['source'] as const,
    registers: [this.registry]
  })

  /** Bytes handed to runtimes, by interface (mirror, socket) — what the fleet saved a registry. */
  readonly bytesServed = new Counter({
    name: 'shoal_served_bytes_total',
    help: 'Bytes served to runtimes, by interface',
    labelNames: ['interface'] as const,
    registers: [this.registry]
  })

  /** Time to fetch, verify and store one piece. */
  readonly pieceSeconds = new Histogram({
    name: 'shoal_piece_fetch_seconds',
    help: 'Time to fetch, verify and store one piece, by source',
    labelNames: ['source'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry]
  })

  /** Pieces or blobs whose bytes did not match their hash: each one is data that was refused. */
  readonly verifyFailures = new Counter({
    name: 'shoal_verify_failures_total',
    help: 'Pieces or blobs refused because their bytes did not match their hash',
    labelNames: ['kind', 'source'] as const,
    registers: [this.registry]
  })

  /** Peers cut off and banned for a while, by reason (bad piece, forged piece). */
  readonly peerBans = new Counter({
    name: 'shoal_peer_bans_total',
    help: 'Peers banned, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry]
  })

  /**
   * Sessions refused because a peer asked for a private blob without a valid proof of access
   * (`no-proof`, `bad-proof`): peers without the manifest, or holding another manifest's key.
   */
  readonly peerAccessDenied = new Counter({
    name: 'shoal_peer_access_denied_total',
    help: 'Peer sessions refused for a private blob without a valid proof of access, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry]
  })

  /** Pieces served to peers from blobs this node had not finished: sharing while downloading. */
  readonly partialPiecesServed = new Counter({
    name: 'shoal_partial_pieces_served_total',
    help: 'Pieces served to peers before this node had the whole blob',
    registers: [this.registry]
  })

  /** DHT operations (provide, find providers), by outcome. */
  readonly dhtOperations = new Counter({
    name: 'shoal_dht_operations_total',
    help: 'DHT operations, by operation and outcome',
    labelNames: ['op', 'outcome'] as const,
    registers: [this.registry]
  })

  /** Peers this node is connected to. */
  readonly swarmPeers = new Gauge({
    name: 'shoal_swarm_peers',
    help: 'Peers connected in the swarm',
    registers: [this.registry]
  })

  readonly blobsCompleted = new Counter({
    name: 'shoal_blobs_completed_total',
    help: 'Blobs fetched and verified against their digest',
    registers: [this.registry]
  })

  readonly activeTransfers = new Gauge({
    name: 'shoal_active_transfers',
    help: 'Blobs being fetched now',
    registers: [this.registry]
  })

  readonly httpRequests = new Counter({
    name: 'shoal_http_requests_total',
    help: 'Requests answered on the mirror and the socket API, by interface and status',
    labelNames: ['interface', 'status'] as const,
    registers: [this.registry]
  })

  readonly storeUsedBytes = new Gauge({
    name: 'shoal_store_used_bytes',
    help: 'Bytes reserved in the store by complete and partial blobs',
    registers: [this.registry]
  })

  readonly storeQuotaBytes = new Gauge({
    name: 'shoal_store_quota_bytes',
    help: 'Disk quota of the store',
    registers: [this.registry]
  })

  readonly storeBlobs = new Gauge({
    name: 'shoal_store_blobs',
    help: 'Blobs tracked by the store, by state',
    labelNames: ['state'] as const,
    registers: [this.registry]
  })

  /** 1 while `/readyz` answers ready: store open, DHT usable, not draining. */
  readonly ready = new Gauge({
    name: 'shoal_ready',
    help: 'Whether the agent is ready (store open, DHT usable, not draining)',
    registers: [this.registry]
  })

  /** 1 once the agent is draining: it sends peers elsewhere and advertises nothing. */
  readonly draining = new Gauge({
    name: 'shoal_draining',
    help: 'Whether the agent is draining (stopping, or shoal drain)',
    registers: [this.registry]
  })

  /** Piece-protocol sessions this node serves now: what a drain waits for. */
  readonly uploadSessions = new Gauge({
    name: 'shoal_upload_sessions',
    help: 'Piece-protocol sessions served to peers now',
    registers: [this.registry]
  })

  /** Bytes of blobs pinned: what the quota can never evict. */
  readonly storePinnedBytes = new Gauge({
    name: 'shoal_store_pinned_bytes',
    help: 'Bytes of pinned blobs (never evicted)',
    registers: [this.registry]
  })

  /** Configuration reloads (SIGHUP), by outcome: `applied`, or `rejected` (an invalid file). */
  readonly configReloads = new Counter({
    name: 'shoal_config_reloads_total',
    help: 'Configuration reloads, by outcome',
    labelNames: ['outcome'] as const,
    registers: [this.registry]
  })

  /** Bytes evicted from the store, by reason: `gc` (shoal gc) or `quota` (a lower quota). */
  readonly evictedBytes = new Counter({
    name: 'shoal_store_evicted_bytes_total',
    help: 'Bytes evicted from the store by gc or a lowered quota, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry]
  })

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'shoal_' })
  }

  /** Runs before every scrape: gauges that mirror state elsewhere (store usage) refresh here. */
  onScrape: (() => void | Promise<void>) | undefined

  /** Prometheus text exposition. */
  async render(): Promise<{ contentType: string; body: string }> {
    await this.onScrape?.()
    return { contentType: this.registry.contentType, body: await this.registry.metrics() }
  }
}
