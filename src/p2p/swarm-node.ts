/**
 * One agent's libp2p host: the swarm's private network. TCP, Noise and yamux under a pnet
 * connection protector (no swarm key, no connection), identify and ping, and a kad-dht in server
 * mode on Shoal's own protocol, so agents form a DHT among themselves and never touch the public
 * IPFS network. Every setting below that differs from libp2p's defaults is one that fails
 * silently on a LAN when left out (see the comments and shared/recipes/libp2p.md).
 */
import '../polyfill.ts'
import './xsalsa20-patch.ts'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { bootstrap } from '@libp2p/bootstrap'
import { type Identify, identify } from '@libp2p/identify'
import type { ConnectionGater, Libp2p, PeerDiscovery, PeerId, PeerInfo, PrivateKey } from '@libp2p/interface'
import { type KadDHT, kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { mdns } from '@libp2p/mdns'
import { type Ping, ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import type { Logger } from 'pino'
import { InternalError } from '../errors.ts'
import type { AbortOptions, Startable } from '../interface/common.ts'
import { DnsDiscovery, type DnsDiscoveryInit, type DnsResolver } from './dns-discovery.ts'
import { LevelDatastore } from './level-datastore.ts'
import { parseSwarmKey } from './swarm-key.ts'

/** The services every swarm node runs. */
export type SwarmServices = {
  identify: Identify
  ping: Ping
  dht: KadDHT
}

/** The libp2p host type a `SwarmNode` wraps. */
export type SwarmLibp2p = Libp2p<SwarmServices>

/** Collaborators of a `SwarmNode`. */
export interface SwarmNodeComponents {
  logger: Logger
  /** Resolver for `dnsDiscovery`; default: the system's name servers (A and AAAA). */
  dnsResolver?: DnsResolver
}

/** Configuration of a `SwarmNode`. */
export interface SwarmNodeInit {
  /** Multiaddrs to listen on, e.g. `/ip4/0.0.0.0/tcp/4001` (`/tcp/0` picks a free port). */
  listen: string[]
  /** Seed peers: multiaddrs ending in `/p2p/<peer id>`. Empty for the first node of a swarm. */
  bootstrap: string[]
  /** The swarm key, as returned by `parseSwarmKey` / `loadOrCreateSwarmKey`. */
  swarmKey: Uint8Array
  /** This node's identity (see `loadOrCreatePrivateKey`): the peer id derives from it. */
  privateKey: PrivateKey
  /** Prefix of Shoal's own protocols; the DHT speaks `<prefix>/kad/1.0.0`. Default `/shoal`. */
  protocolPrefix?: string
  /** When given, only these peer ids may connect or be dialled (besides the swarm key check). */
  allowPeers?: string[]
  /** A LevelDB directory for the peer store and provider records; in memory when absent. */
  datastorePath?: string
  /**
   * Networks exempt from libp2p's per-IP inbound connection limit (multiaddrs, `/ipcidr/` for a
   * range). Default: loopback. Add the fleet's node network here.
   */
  allowNetworks?: string[]
  /** New inbound connections accepted per second from one IP outside `allowNetworks`. Default 100. */
  inboundConnectionThreshold?: number
  /** Delay before dialling the bootstrap peers, in ms. Default 100. */
  bootstrapDelayMs?: number
  /**
   * Dial every address `name` resolves to (a Kubernetes headless service), on `port`, on start
   * and every `intervalMs` (default 30 s). See `DnsDiscovery`.
   */
  dnsDiscovery?: DnsDiscoveryInit
  /**
   * Find and dial peers on the LAN by multicast DNS, under a service tag derived from
   * `protocolPrefix` (see `mdnsServiceTag`). Default false.
   */
  mdns?: boolean
}

/** Default protocol prefix. */
export const DEFAULT_PROTOCOL_PREFIX = '/shoal'
/** Networks exempt from the inbound connection rate limit by default. */
export const DEFAULT_ALLOW_NETWORKS = ['/ip4/127.0.0.0/ipcidr/8', '/ip6/::1/ipcidr/128']
// libp2p's default of 5 new connections per second per IP makes a flash crowd behind one NAT, or
// a test swarm on loopback, fail with a misleading EncryptionFailedError.
const DEFAULT_INBOUND_CONNECTION_THRESHOLD = 100
// kad-dht's defaults (32 in / 64 out per connection) make bulk provides fail silently.
const DHT_MAX_STREAMS = 512
// Ping streams per connection, each way (the default, one, makes the connection monitor fail).
const PING_MAX_STREAMS = 4
// The connection monitor cuts a connection whose ping takes longer than this (default 5 s).
const PING_MIN_TIMEOUT_MS = 20_000
// A paused stream with libp2p's 4 MiB read buffer overflows yamux's 16 MiB window (the recipe).
const YAMUX_MAX_READ_BUFFER = 32 * 2 ** 20
// Bounds the dial of a peer found by mDNS: an address from another swarm can hang a Noise
// handshake until libp2p's own timeout.
const DISCOVERED_DIAL_TIMEOUT = 5000

/**
 * The mDNS service tag of a swarm: `/shoal` → `_shoal._udp.local`. Swarms with different
 * protocol prefixes do not answer each other's queries (the swarm key still guards admission).
 */
export function mdnsServiceTag(protocolPrefix: string): string {
  const label = protocolPrefix
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 60)
  return `_${label || 'shoal'}._udp.local`
}

/** A libp2p host in the swarm's private network, running a private kad-dht. */
export class SwarmNode implements Startable {
  /** This node's peer id (base58btc), known before `start()`. */
  readonly peerId: string
  readonly #log: Logger
  readonly #init: SwarmNodeInit
  readonly #swarmKey: Uint8Array
  readonly #known = new Set<string>()
  #libp2p: SwarmLibp2p | undefined
  #datastore: LevelDatastore | undefined
  #dnsDiscovery: DnsDiscovery | undefined
  readonly #dnsResolver: DnsResolver | undefined
  #starting: Promise<void> | undefined

  constructor(components: SwarmNodeComponents, init: SwarmNodeInit) {
    this.#log = components.logger.child({ component: 'swarm' })
    this.#dnsResolver = components.dnsResolver
    this.#init = init
    // Fail at construction, with our own error, rather than inside createLibp2p.
    this.#swarmKey = parseSwarmKey(init.swarmKey)
    this.peerId = init.privateKey.publicKey.toString()
  }

  /** True between a completed `start()` and `stop()`. */
  get started(): boolean {
    return this.#libp2p !== undefined
  }

  /** The libp2p host (for protocols such as the piece protocol). Throws before `start()`. */
  get libp2p(): SwarmLibp2p {
    if (this.#libp2p === undefined) throw new InternalError('swarm node used before start() or after stop()')
    return this.#libp2p
  }

  /** Starts listening and joins the DHT through the bootstrap peers. Idempotent. */
  async start(): Promise<void> {
    if (this.#libp2p !== undefined) return
    this.#starting ??= this.#start().finally(() => {
      this.#starting = undefined
    })
    await this.#starting
  }

  async #start(): Promise<void> {
    const init = this.#init
    const prefix = init.protocolPrefix ?? DEFAULT_PROTOCOL_PREFIX
    let datastore: LevelDatastore | undefined
    if (init.datastorePath !== undefined) {
      datastore = new LevelDatastore(init.datastorePath)
      await datastore.open()
    }
    // libp2p 3 only adds discovered peers to the peer store (no autodial): the mDNS service is
    // kept so its finds can be dialled below.
    let lan: PeerDiscovery | undefined
    const peerDiscovery = [
      ...(init.bootstrap.length > 0
        ? [bootstrap({ list: init.bootstrap, timeout: init.bootstrapDelayMs ?? 100 })]
        : []),
      ...(init.mdns === true
        ? [
            (components: Parameters<ReturnType<typeof mdns>>[0]) => {
              lan = mdns({ serviceTag: mdnsServiceTag(prefix) })(components)
              return lan
            }
          ]
        : [])
    ]
    try {
      const node = await createLibp2p({
        // Started below, once the discovery listeners are in place.
        start: false,
        privateKey: init.privateKey,
        ...(datastore === undefined ? {} : { datastore }),
        addresses: { listen: init.listen },
        transports: [tcp()],
        connectionEncrypters: [noise()],
        streamMuxers: [yamux({ streamOptions: { maxReadBufferLength: YAMUX_MAX_READ_BUFFER } })],
        connectionProtector: preSharedKey({ psk: this.#swarmKey }),
        connectionGater: allowListGater(init.allowPeers),
        // A connection busy with pieces answers pings late: a slow ping is no reason to cut it.
        connectionMonitor: { pingTimeout: { minTimeout: PING_MIN_TIMEOUT_MS } },
        connectionManager: {
          allow: init.allowNetworks ?? DEFAULT_ALLOW_NETWORKS,
          inboundConnectionThreshold: init.inboundConnectionThreshold ?? DEFAULT_INBOUND_CONNECTION_THRESHOLD
        },
        peerDiscovery,
        services: {
          identify: identify(),
          // libp2p's connection monitor pings every connection every 10 s over this protocol and
          // aborts the connection when the ping cannot open a stream; with the default cap of one
          // outbound ping stream it often cannot (another ping still open), and every session on
          // the connection died with it.
          ping: ping({ maxOutboundStreams: PING_MAX_STREAMS, maxInboundStreams: PING_MAX_STREAMS }),
          dht: kadDHT({
            protocol: `${prefix}/kad/1.0.0`,
            // kad-dht stays a client (answers nothing) until it sees a public address: on a LAN
            // no node would serve queries.
            clientMode: false,
            // The default mapper drops loopback and private addresses: empty routing tables and
            // providers without addresses.
            peerInfoMapper: passthroughMapper,
            maxInboundStreams: DHT_MAX_STREAMS,
            maxOutboundStreams: DHT_MAX_STREAMS
          })
        }
      })
      if (node.peerId.toString() !== this.peerId) {
        throw new InternalError(`libp2p chose peer id ${node.peerId} for a key whose id is ${this.peerId}`)
      }
      lan?.addEventListener('peer', (evt) => this.#dialDiscovered(node, evt.detail))
      // Every peer this node has heard of (bootstrap, the DHT's walks, inbound connections): a
      // flash crowd's blob swarms ask them before the DHT has any provider record.
      node.addEventListener('peer:discovery', (evt) => this.#known.add(evt.detail.id.toString()))
      node.addEventListener('peer:connect', (evt) => this.#known.add(evt.detail.toString()))
      node.addEventListener('connection:close', (evt) => {
        const c = evt.detail
        this.#log.debug(
          { peer: c.remotePeer.toString(), direction: c.direction, streams: c.streams.length },
          'connection closed'
        )
      })
      await node.start()
      this.#libp2p = node
      this.#datastore = datastore
    } catch (err) {
      await datastore?.close().catch(() => {})
      throw err
    }
    this.#log.info({ peerId: this.peerId, addresses: this.addresses() }, 'swarm node started')
    if (init.dnsDiscovery !== undefined) {
      this.#dnsDiscovery = new DnsDiscovery(
        { node: this, logger: this.#log, ...(this.#dnsResolver && { resolver: this.#dnsResolver }) },
        init.dnsDiscovery
      )
      await this.#dnsDiscovery.start()
    }
  }

  // Dials a peer found on the LAN unless it is connected or not on the allow-list (the gater
  // would refuse it anyway; this spares the attempt). Failures are expected (a node of another
  // swarm with the same tag, a stale address) and logged at debug.
  #dialDiscovered(node: SwarmLibp2p, peer: PeerInfo): void {
    const id = peer.id.toString()
    const allow = this.#init.allowPeers
    if (allow !== undefined && !allow.includes(id)) return
    if (node.getConnections(peer.id).length > 0 || node.status !== 'started') return
    const addrs = peer.multiaddrs.map((ma) => ma.encapsulate(`/p2p/${id}`))
    if (addrs.length === 0) return
    node.dial(addrs, { signal: AbortSignal.timeout(DISCOVERED_DIAL_TIMEOUT) }).then(
      () => this.#log.debug({ peer: id }, 'dialled a peer found by mDNS'),
      (err: unknown) => this.#log.debug({ err, peer: id }, 'could not dial a peer found by mDNS')
    )
  }

  /** Closes every connection and listener, then the datastore. Idempotent. */
  async stop(): Promise<void> {
    await this.#starting?.catch(() => {})
    await this.#dnsDiscovery?.stop()
    this.#dnsDiscovery = undefined
    const node = this.#libp2p
    const datastore = this.#datastore
    this.#libp2p = undefined
    this.#datastore = undefined
    if (node !== undefined) {
      await node.stop()
      this.#log.info({ peerId: this.peerId }, 'swarm node stopped')
    }
    await datastore?.close()
  }

  /** The multiaddrs other nodes can dial this one on, each ending in `/p2p/<peer id>`. */
  addresses(): string[] {
    return this.libp2p.getMultiaddrs().map((ma) => ma.toString())
  }

  /**
   * Connects to a peer at `address` (a multiaddr, with `/p2p/<id>` to check who answers).
   * Returns the remote peer id. Rejects when the peer is unreachable, has another swarm key, or
   * is not on the allow-list.
   */
  async dial(address: string, options: AbortOptions = {}): Promise<string> {
    const connection = await this.libp2p.dial(multiaddr(address), options)
    return connection.remotePeer.toString()
  }

  /**
   * The id of a connected peer that listens on `address` (a multiaddr without `/p2p/`), as its
   * identify reported, if any.
   */
  async connectedPeerAt(address: string): Promise<string | undefined> {
    const node = this.libp2p
    for (const id of node.getPeers()) {
      const peer = await node.peerStore.get(id).catch(() => undefined)
      if (peer?.addresses.some((a) => a.multiaddr.toString() === address)) return id.toString()
    }
    return undefined
  }

  /** Connected peers with the address of each open connection (for `shoal status`). */
  connections(): { peerId: string; address: string }[] {
    return (this.#libp2p?.getConnections() ?? []).map((c) => ({
      peerId: c.remotePeer.toString(),
      address: c.remoteAddr.toString()
    }))
  }

  /**
   * Peers in the DHT's routing table: 0 means this node can neither find providers nor be
   * found (readiness waits for one). 0 before `start()`.
   */
  routingTableSize(): number {
    // kad-dht's routing table is not on its public interface; the service object carries it.
    const dht = this.#libp2p?.services.dht as { routingTable?: { size?: number } } | undefined
    return dht?.routingTable?.size ?? 0
  }

  /** Peer ids this node holds an open connection to. */
  peers(): string[] {
    return this.#libp2p?.getPeers().map((id) => id.toString()) ?? []
  }

  /** Peer ids this node has heard of since it started, connected or not (never itself). */
  knownPeers(): string[] {
    return [...this.#known].filter((id) => id !== this.peerId)
  }
}

// Denies every peer missing from `allowPeers`, before and after the encryption handshake (an
// inbound peer's id is known only once Noise has run).
function allowListGater(allowPeers: string[] | undefined): ConnectionGater {
  if (allowPeers === undefined) return {}
  const allowed = new Set(allowPeers)
  const deny = (peer: PeerId): boolean => !allowed.has(peer.toString())
  return {
    denyDialPeer: deny,
    denyInboundEncryptedConnection: deny,
    denyOutboundEncryptedConnection: deny
  }
}
