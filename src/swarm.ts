import './polyfill.ts'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import type { ShoalMetrics } from './api/metrics.ts'
import { ConfigInvalidError } from './errors.ts'
import { TokenBucket } from './fetch/token-bucket.ts'
import type { AbortOptions, Startable } from './interface/common.ts'
import type { AnnounceOptions, BlobPeers, JoinOptions, PeerSource } from './interface/peers.ts'
import type { BlobStore } from './interface/store.ts'
import { DhtContentRouting } from './p2p/content-routing.ts'
import { loadOrCreatePrivateKey } from './p2p/identity.ts'
import { PeerBans } from './p2p/peer-bans.ts'
import { PieceExchange } from './p2p/piece-exchange.ts'
import { parseSwarmKey } from './p2p/swarm-key.ts'
import { SwarmNode } from './p2p/swarm-node.ts'
import { SwarmPeerSource } from './p2p/swarm-peers.ts'

export interface SwarmInit {
  listen: string[]
  bootstrap: string[]
  keyFile?: string | undefined
  allowPeers?: string[] | undefined
  findTimeout: number
  uploadSlots: number
  /** Pieces uploaded at once; beyond that peers hear `PIECE_BUSY`. Unset: no limit. */
  concurrentUploads?: number | undefined
  /** Bytes per second this node uploads to peers at most. */
  uploadRate?: number | undefined
  /** The identity key and the peer store live under the agent's store directory. */
  storeDir: string
  /** Dial every address of a DNS name (a headless service) on `port`, every `interval` ms. */
  dnsDiscovery?: { name: string; port: number; interval: number } | undefined
  /** Find peers on the LAN by multicast DNS. */
  mdns?: boolean | undefined
}

/** Connected peers listed by `describe()`. */
const STATUS_PEERS = 8

/**
 * The agent's swarm side, wired in one place: the libp2p node (swarm key, private DHT), the
 * piece protocol serving what the store holds, and the fetcher's `PeerSource`. The fetcher is
 * built before the node can start (keys are read in `start`), so `peers` forwards to the real
 * source once it exists and finds no peers until then.
 */
export class Swarm implements Startable {
  readonly #store: BlobStore
  readonly #metrics: ShoalMetrics | undefined
  readonly #log: Logger
  readonly #init: SwarmInit
  #node: SwarmNode | undefined
  #exchange: PieceExchange | undefined
  #source: SwarmPeerSource | undefined
  #peersGauge: NodeJS.Timeout | undefined
  /** Peers banned for bad or forged pieces; kept across restarts of the node. */
  readonly #bans = new PeerBans()
  /** Paces uploads to peers; its rate changes on a reload (`swarm.uploadRate`). */
  readonly upload: TokenBucket
  #draining = false

  readonly peers: PeerSource = {
    join: (digest: string, options?: JoinOptions): BlobPeers | undefined =>
      this.#source?.join(digest, options),
    announce: (digest: string, options?: AnnounceOptions) => this.#source?.announce(digest, options),
    withdraw: (digest: string) => this.#source?.withdraw(digest)
  }

  constructor(components: { store: BlobStore; logger: Logger; metrics?: ShoalMetrics }, init: SwarmInit) {
    this.#store = components.store
    this.#metrics = components.metrics
    this.#log = components.logger
    this.#init = init
    this.upload = new TokenBucket(init.uploadRate)
  }

  /** True when nothing but the bootstrap list could find peers and it is empty: a first node. */
  get standalone(): boolean {
    const i = this.#init
    return i.bootstrap.length === 0 && i.dnsDiscovery === undefined && i.mdns !== true
  }

  /** Peers in the DHT's routing table (0 before start). */
  routingTableSize(): number {
    return this.#node?.routingTableSize() ?? 0
  }

  /** Piece-protocol sessions served now. */
  get activeUploads(): number {
    return this.#exchange?.activeUploads ?? 0
  }

  /** True once `drain` was called. */
  get draining(): boolean {
    return this.#draining
  }

  /**
   * Stops advertising (every provider record withdrawn, none made from now on), refuses new
   * piece sessions with `PEER_DRAINING`, and waits for the uploads in flight to end, or for
   * `signal`. Fetches this node makes go on.
   */
  async drain(options: AbortOptions = {}): Promise<{ withdrawn: number; uploadsLeft: number }> {
    this.#draining = true
    const withdrawn = (await this.#source?.drain()) ?? 0
    const uploadsLeft = (await this.#exchange?.drain(options)) ?? 0
    return { withdrawn, uploadsLeft }
  }

  async start(): Promise<void> {
    if (this.#node) return
    const keyFile = this.#init.keyFile
    if (!keyFile) throw new ConfigInvalidError('swarm.keyFile is required when the swarm is enabled')
    let keyText: string
    try {
      keyText = await readFile(keyFile, 'utf8')
    } catch (err) {
      throw new ConfigInvalidError(`cannot read the swarm key ${keyFile}: ${(err as Error).message}`, {
        cause: err
      })
    }
    const node = new SwarmNode(
      { logger: this.#log },
      {
        listen: this.#init.listen,
        bootstrap: this.#init.bootstrap,
        swarmKey: parseSwarmKey(keyText),
        privateKey: await loadOrCreatePrivateKey(join(this.#init.storeDir, 'identity.key')),
        datastorePath: join(this.#init.storeDir, 'p2p'),
        ...(this.#init.allowPeers && { allowPeers: this.#init.allowPeers }),
        ...(this.#init.dnsDiscovery && {
          dnsDiscovery: {
            name: this.#init.dnsDiscovery.name,
            port: this.#init.dnsDiscovery.port,
            intervalMs: this.#init.dnsDiscovery.interval
          }
        }),
        mdns: this.#init.mdns ?? false
      }
    )
    await node.start()
    const routing = new DhtContentRouting({ node, logger: this.#log })
    const metrics = this.#metrics
    const exchange = new PieceExchange(
      { node, store: this.#store, logger: this.#log, bans: this.#bans, ...(metrics && { metrics }) },
      {
        uploadSlots: this.#init.uploadSlots,
        upload: this.upload,
        concurrentUploads: this.#init.concurrentUploads
      }
    )
    await exchange.start()
    this.#node = node
    this.#exchange = exchange
    this.#source = new SwarmPeerSource(
      {
        routing,
        exchange,
        bans: this.#bans,
        logger: this.#log,
        peerId: node.peerId,
        connectedPeers: () => node.peers(),
        knownPeers: () => node.knownPeers(),
        ...(metrics && { metrics })
      },
      { findTimeoutMs: this.#init.findTimeout }
    )
    metrics?.swarmPeers.reset()
    this.#peersGauge = setInterval(() => metrics?.swarmPeers.set(node.peers().length), 1000)
    this.#peersGauge.unref()
    // Re-announce what the store already holds (after a restart), in the background: a private
    // blob only under the rendezvous keys of the manifests recorded for it.
    const source = this.#source
    const store = this.#store
    void (async () => {
      for (const b of await store.list()) {
        if (!b.complete) continue
        const access = await store.access(b.digest)
        if (access === undefined) continue
        source.announce(b.digest, access)
      }
    })().catch(() => undefined)
  }

  async stop(): Promise<void> {
    const node = this.#node
    if (!node) return
    this.#source = undefined
    this.#node = undefined
    clearInterval(this.#peersGauge)
    await this.#exchange?.stop()
    this.#exchange = undefined
    await node.stop()
  }

  /** Peer id, addresses, peers, the DHT and the uploads in flight, for `shoal status`. */
  describe(): Record<string, unknown> {
    const node = this.#node
    if (!node) return { started: false }
    const connections = node.connections()
    return {
      peerId: node.peerId,
      addresses: node.addresses(),
      peers: node.peers().length,
      // A few, for a glance: the count above is the whole story.
      peerList: connections.slice(0, STATUS_PEERS),
      routingTable: node.routingTableSize(),
      announced: this.#source?.announced ?? 0,
      banned: this.#bans.active,
      draining: this.#draining,
      uploads: this.#exchange?.uploads() ?? [],
      served: this.#exchange?.stats
    }
  }
}
