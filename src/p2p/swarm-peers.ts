import type { Logger } from 'pino'
import type { AbortOptions } from '../interface/common.ts'
import type { PeerBlobSession, PeerSource } from '../interface/peers.ts'
import type { DhtContentRouting } from './content-routing.ts'
import type { PieceExchange } from './piece-exchange.ts'

export interface SwarmPeerSourceComponents {
  routing: DhtContentRouting
  exchange: PieceExchange
  logger: Logger
}

export interface SwarmPeerSourceInit {
  /** How long a provider lookup may take before the blob goes to the seed. Default 2 s. */
  findTimeoutMs?: number
  /** Providers asked for a session, one after another, before giving up. Default 4. */
  maxProviders?: number
}

/**
 * The fetcher's view of the swarm: providers of a blob from the DHT, a piece-protocol session
 * with the first that answers, and announcements of blobs this node completes.
 */
export class SwarmPeerSource implements PeerSource {
  readonly #c: SwarmPeerSourceComponents
  readonly #findTimeoutMs: number
  readonly #maxProviders: number
  readonly #log: Logger
  readonly #announced = new Set<string>()

  constructor(components: SwarmPeerSourceComponents, init: SwarmPeerSourceInit = {}) {
    this.#c = components
    this.#findTimeoutMs = init.findTimeoutMs ?? 2000
    this.#maxProviders = init.maxProviders ?? 4
    this.#log = components.logger.child({ component: 'swarm' })
  }

  async open(
    digest: string,
    options: AbortOptions & { size?: number } = {}
  ): Promise<PeerBlobSession | undefined> {
    const providers = await this.#c.routing.findProviders(digest, {
      limit: this.#maxProviders,
      timeoutMs: this.#findTimeoutMs,
      ...(options.signal && { signal: options.signal })
    })
    for (const p of providers) {
      if (p.addresses.length === 0) continue
      try {
        return await this.#c.exchange.openSession(p, digest, options)
      } catch (err) {
        this.#log.debug(
          { digest, peer: p.peerId, err: (err as Error).message },
          'provider did not serve the blob'
        )
      }
    }
    return undefined
  }

  announce(digest: string): void {
    if (this.#announced.has(digest)) return
    this.#announced.add(digest)
    this.#c.routing.provide(digest).then(
      (accepted) => this.#log.debug({ digest, accepted }, 'announced'),
      (err) => {
        this.#announced.delete(digest)
        this.#log.warn({ digest, err: (err as Error).message }, 'announce failed')
      }
    )
  }

  withdraw(digest: string): void {
    if (!this.#announced.delete(digest)) return
    this.#c.routing.stopProviding(digest).catch(() => undefined)
  }

  /** Blobs announced so far. */
  get announced(): number {
    return this.#announced.size
  }
}
