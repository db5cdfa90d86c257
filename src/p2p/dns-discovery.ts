/**
 * DNS discovery, for a Kubernetes headless service: the service name resolves to every ready
 * pod's address, so resolving it on start and every interval, and dialling each address, joins a
 * node to the swarm without a static bootstrap list. DNS gives no peer ids: the first dial of an
 * address goes without `/p2p/` (Noise tells us who answered, the swarm key and the allow-list
 * still decide admission); later dials add the learned id, so libp2p reuses an open connection
 * instead of opening another one.
 */
import { Resolver } from 'node:dns/promises'
import { isIPv6 } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Logger } from 'pino'
import { second } from '../constants.ts'
import type { AbortOptions, Startable } from '../interface/common.ts'

/** Default time between two look-ups of the service name. */
export const DEFAULT_DNS_DISCOVERY_INTERVAL = 30 * second
// A dial to an address that holds a node with another swarm key can hang until libp2p's own
// dial timeout (the recipe): bound it so one bad address does not hold up a round.
const DEFAULT_DIAL_TIMEOUT = 5 * second
const RESOLVE_TIMEOUT = 5 * second

/** Turns a name into IP addresses (IPv4 and IPv6, as text). */
export interface DnsResolver {
  resolve(name: string, options: AbortOptions): Promise<string[]>
}

/** What DNS discovery needs from the libp2p host (a `SwarmNode` has all of it). */
export interface DnsDiscoveryNode {
  /** This node's own addresses (`/p2p/<id>` suffixes are ignored): never dialled. */
  addresses(): string[]
  /** Peer ids with an open connection. */
  peers(): string[]
  /** Connects to a multiaddr and returns the remote peer id. */
  dial(address: string, options: AbortOptions): Promise<string>
  /**
   * A connected peer known (through identify) to listen on `address`, if any: spares a second
   * connection to a peer that dialled us first.
   */
  connectedPeerAt?(address: string): Promise<string | undefined>
}

/** Collaborators of a `DnsDiscovery`. */
export interface DnsDiscoveryComponents {
  node: DnsDiscoveryNode
  logger: Logger
  /** Default: `SystemDnsResolver` (A and AAAA records from the system's name servers). */
  resolver?: DnsResolver
}

/** Configuration of a `DnsDiscovery`. */
export interface DnsDiscoveryInit {
  /** The name to resolve, e.g. `shoal.kube-system.svc.cluster.local`. */
  name: string
  /** The TCP port every node listens on (DNS A/AAAA records carry no port). */
  port: number
  /** Time between look-ups, in ms. Default 30 s. */
  intervalMs?: number
  /** Longest dial of one address, in ms. Default 5 s. */
  dialTimeoutMs?: number
}

/** What one discovery round did. */
export interface DnsDiscoveryRound {
  /** Addresses the name resolved to, as multiaddrs. */
  addresses: string[]
  /** Peer ids newly dialled with success. */
  connected: string[]
}

/** Configuration of a `SystemDnsResolver`. */
export interface SystemDnsResolverInit {
  /** Name servers (`ip` or `ip:port`); default: the system's (`/etc/resolv.conf`). */
  servers?: string[]
}

/**
 * Resolves A and AAAA records with `node:dns/promises` (straight from the name servers, no
 * cache: a headless service's answer changes as pods come and go). A family without records
 * is no error.
 */
export class SystemDnsResolver implements DnsResolver {
  readonly #servers: string[] | undefined

  constructor(init: SystemDnsResolverInit = {}) {
    this.#servers = init.servers
  }

  async resolve(name: string, options: AbortOptions = {}): Promise<string[]> {
    options.signal?.throwIfAborted()
    const resolver = new Resolver({ timeout: RESOLVE_TIMEOUT, tries: 2 })
    if (this.#servers !== undefined) resolver.setServers(this.#servers)
    const cancel = () => resolver.cancel()
    options.signal?.addEventListener('abort', cancel, { once: true })
    try {
      const results = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)])
      const found = results.flatMap((r) => (r.status === 'fulfilled' ? r.value : []))
      const failure = results.find(
        (r): r is PromiseRejectedResult =>
          r.status === 'rejected' && !NO_RECORDS.has((r.reason as NodeJS.ErrnoException).code ?? '')
      )
      if (found.length === 0 && failure !== undefined) throw failure.reason
      return found
    } finally {
      options.signal?.removeEventListener('abort', cancel)
    }
  }
}
// A name with only A or only AAAA records answers the other family with this (an unknown name
// answers ENOTFOUND, which is reported: a misspelt service name shows in the debug log).
const NO_RECORDS = new Set(['ENODATA'])

/** Dials every address a DNS name resolves to, on start and every interval. */
export class DnsDiscovery implements Startable {
  readonly #node: DnsDiscoveryNode
  readonly #log: Logger
  readonly #resolver: DnsResolver
  readonly #init: DnsDiscoveryInit
  // Address → the peer id that answered there, so later rounds skip connected peers and detect a
  // pod IP reused by another node (the dial with the old id fails, the entry goes).
  readonly #known = new Map<string, string>()
  #controller: AbortController | undefined
  #loop: Promise<void> | undefined

  constructor(components: DnsDiscoveryComponents, init: DnsDiscoveryInit) {
    this.#node = components.node
    this.#log = components.logger.child({ component: 'dns-discovery' })
    this.#resolver = components.resolver ?? new SystemDnsResolver()
    this.#init = init
  }

  /** Starts the look-up loop (the first round runs at once). Idempotent. */
  async start(): Promise<void> {
    if (this.#controller !== undefined) return
    const controller = new AbortController()
    this.#controller = controller
    this.#loop = this.#run(controller.signal)
  }

  /** Stops the loop, aborting a round in progress, and clears its timer. Idempotent. */
  async stop(): Promise<void> {
    const controller = this.#controller
    if (controller === undefined) return
    this.#controller = undefined
    controller.abort()
    await this.#loop
    this.#loop = undefined
  }

  async #run(signal: AbortSignal): Promise<void> {
    const interval = this.#init.intervalMs ?? DEFAULT_DNS_DISCOVERY_INTERVAL
    while (!signal.aborted) {
      try {
        const round = await this.discover({ signal })
        if (round.connected.length > 0) this.#log.debug({ peers: round.connected }, 'dns discovery connected')
      } catch (err) {
        if (!signal.aborted) this.#log.debug({ err, name: this.#init.name }, 'dns discovery round failed')
      }
      await sleep(interval, undefined, { signal }).catch(() => {})
    }
  }

  /**
   * One round: resolves the name and dials every address that is not this node's and not a
   * connected peer's. Rejects only when the look-up fails; failed dials are logged.
   */
  async discover(options: AbortOptions = {}): Promise<DnsDiscoveryRound> {
    const { name, port } = this.#init
    const ips = await this.#resolver.resolve(name, options)
    const addresses = [...new Set(ips.map((ip) => `/${isIPv6(ip) ? 'ip6' : 'ip4'}/${ip}/tcp/${port}`))]
    for (const a of this.#known.keys()) if (!addresses.includes(a)) this.#known.delete(a)
    const own = new Set(this.#node.addresses().map(withoutPeerId))
    const connected = new Set(this.#node.peers())
    const dialled = await Promise.all(
      addresses.filter((a) => !own.has(a)).map((a) => this.#dial(a, connected, options))
    )
    return { addresses, connected: dialled.filter((id): id is string => id !== undefined) }
  }

  // Returns the peer id when this call opened (or found) a connection it did not know of.
  async #dial(address: string, connected: Set<string>, options: AbortOptions): Promise<string | undefined> {
    let id = this.#known.get(address)
    if (id === undefined) {
      id = await this.#node.connectedPeerAt?.(address).catch(() => undefined)
      if (id !== undefined) this.#known.set(address, id)
    }
    if (id !== undefined && connected.has(id)) return undefined
    const target = id === undefined ? address : `${address}/p2p/${id}`
    const timeout = AbortSignal.timeout(this.#init.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT)
    const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout
    try {
      const peer = await this.#node.dial(target, { signal })
      this.#known.set(address, peer)
      return peer
    } catch (err) {
      this.#known.delete(address)
      this.#log.debug({ err, address: target }, 'dns discovery dial failed')
      return undefined
    }
  }
}

function withoutPeerId(address: string): string {
  return address.replace(/\/p2p\/[^/]+$/, '')
}
