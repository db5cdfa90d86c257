/**
 * Finding peers that hold a blob: the swarm's kad-dht, keyed per blob (never per piece — a
 * provide costs tens to hundreds of milliseconds). A blob's key is the CID of its sha256
 * multihash, so it is the same on every node without any coordination.
 */
import '../polyfill.ts'
import type { PeerInfo } from '@libp2p/interface'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import * as Digest from 'multiformats/hashes/digest'
import { sha256 } from 'multiformats/hashes/sha2'
import pLimit, { type LimitFunction } from 'p-limit'
import type { Logger } from 'pino'
import { digestHex } from '../content/digest.ts'
import { AbortedError } from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import type { SwarmNode } from './swarm-node.ts'

/** Collaborators of `DhtContentRouting`. */
export interface DhtContentRoutingComponents {
  node: SwarmNode
  logger: Logger
}

/** Configuration of `DhtContentRouting`. */
export interface DhtContentRoutingInit {
  /** Provides running at once across all callers; the rest wait their turn. Default 10. */
  provideConcurrency?: number
}

/** Options of `findProviders`. */
export interface FindProvidersOptions extends AbortOptions {
  /** Stop looking once this many providers (other than this node) are known. Default 8. */
  limit?: number
  /** Give up after this long and return what was found so far. */
  timeoutMs?: number
}

/** A peer that announced it holds (or is fetching) a blob. */
export interface Provider {
  peerId: string
  /** Multiaddrs to dial it on, each ending in `/p2p/<peer id>`; may be empty if none are known. */
  addresses: string[]
}

/** Default number of providers `findProviders` looks for. */
export const DEFAULT_PROVIDER_LIMIT = 8
/** Default provide concurrency (the recipe measured ~10 as the useful level). */
export const DEFAULT_PROVIDE_CONCURRENCY = 10

/** Announces and looks up blob providers in the swarm's private DHT. */
export class DhtContentRouting {
  readonly #node: SwarmNode
  readonly #log: Logger
  // Bulk provides beyond ~10 at once only queue inside kad-dht and slow every lookup.
  readonly #provideLimit: LimitFunction

  constructor(components: DhtContentRoutingComponents, init: DhtContentRoutingInit = {}) {
    this.#node = components.node
    this.#log = components.logger.child({ component: 'routing' })
    this.#provideLimit = pLimit(init.provideConcurrency ?? DEFAULT_PROVIDE_CONCURRENCY)
  }

  /** The DHT key of a blob: CID v1, raw codec, over the sha256 multihash of the digest's bytes. */
  blobKey(digest: string): CID {
    const bytes = Buffer.from(digestHex(digest), 'hex')
    return CID.createV1(raw.code, Digest.create(sha256.code, bytes))
  }

  /** Provides currently waiting for a turn (for metrics and back-pressure). */
  get pendingProvides(): number {
    return this.#provideLimit.pendingCount
  }

  /**
   * Announces that this node provides `digest`. Resolves to the number of peers that accepted
   * the provider record (0 when it reached nobody: the caller decides whether that matters).
   * Throws `InvalidDigestError` for a bad digest and `AbortedError` when aborted.
   */
  async provide(digest: string, options: AbortOptions = {}): Promise<number> {
    const key = this.blobKey(digest)
    return await this.#provideLimit(async () => {
      options.signal?.throwIfAborted()
      const started = performance.now()
      let accepted = 0
      let failed = 0
      try {
        for await (const event of this.#node.libp2p.services.dht.provide(key, { signal: options.signal })) {
          // contentRouting.provide() resolves even when every ADD_PROVIDER failed: count answers.
          if (event.name === 'PEER_RESPONSE' && event.messageName === 'ADD_PROVIDER') accepted++
          else if (event.name === 'QUERY_ERROR') failed++
        }
      } catch (err) {
        throw abortedOr(err, options.signal, `provide ${digest} aborted`)
      }
      this.#log.debug(
        { digest, accepted, failed, ms: Math.round(performance.now() - started) },
        'provided blob'
      )
      return accepted
    }).catch((err: unknown) => {
      throw abortedOr(err, options.signal, `provide ${digest} aborted`)
    })
  }

  /**
   * Looks up peers providing `digest`, this node excluded. Stops as soon as `limit` are known,
   * when `timeoutMs` passes (returning what it has), or when the lookup ends. Throws
   * `AbortedError` when `signal` aborts.
   */
  async findProviders(digest: string, options: FindProvidersOptions = {}): Promise<Provider[]> {
    const key = this.blobKey(digest)
    const limit = options.limit ?? DEFAULT_PROVIDER_LIMIT
    const self = this.#node.peerId
    const found = new Map<string, Provider>()
    if (isAborted(options.signal)) {
      throw new AbortedError(`finding providers of ${digest} aborted`, { cause: options.signal?.reason })
    }
    if (limit <= 0) return []
    // Our own controller ends the lookup once we have enough: kad-dht keeps searching until it
    // has 20 providers, and abandoned lookups slow the next provide down to seconds.
    const done = new AbortController()
    const signals = [done.signal]
    if (options.signal !== undefined) signals.push(options.signal)
    if (options.timeoutMs !== undefined) signals.push(AbortSignal.timeout(options.timeoutMs))
    const signal = AbortSignal.any(signals)
    try {
      for await (const event of this.#node.libp2p.services.dht.findProviders(key, { signal })) {
        if (event.name !== 'PROVIDER') continue
        for (const info of event.providers) {
          const id = info.id.toString()
          if (id === self || found.has(id)) continue
          found.set(id, { peerId: id, addresses: await this.#addressesOf(info) })
          if (found.size >= limit) break
        }
        if (found.size >= limit) {
          done.abort()
          break
        }
      }
    } catch (err) {
      if (isAborted(options.signal)) {
        throw new AbortedError(`finding providers of ${digest} aborted`, { cause: err })
      }
      // Our own abort or the timeout: what was found stands. Anything else is a real failure.
      if (!signal.aborted) throw err
    } finally {
      done.abort()
    }
    this.#log.debug({ digest, providers: found.size }, 'found providers')
    return [...found.values()]
  }

  /**
   * Stops announcing `digest` (removes this node's own provider record, so it is neither
   * re-provided nor returned by local lookups). Records already held by other peers expire.
   */
  async stopProviding(digest: string, options: AbortOptions = {}): Promise<void> {
    await this.#node.libp2p.services.dht.cancelReprovide(this.blobKey(digest), options)
  }

  // Provider records may carry no addresses (an old record, or a peer that announced none): fall
  // back to what the peer store learned from identify.
  async #addressesOf(info: PeerInfo): Promise<string[]> {
    let addrs = info.multiaddrs
    if (addrs.length === 0) {
      try {
        addrs = (await this.#node.libp2p.peerStore.get(info.id)).addresses.map((a) => a.multiaddr)
      } catch {
        addrs = []
      }
    }
    const suffix = `/p2p/${info.id.toString()}`
    return addrs.map((ma) => {
      const s = ma.toString()
      return s.endsWith(suffix) ? s : `${s}${suffix}`
    })
  }
}

// A call, not an inline test: TypeScript would keep the narrowing from an earlier check.
function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true
}

function abortedOr(err: unknown, signal: AbortSignal | undefined, message: string): unknown {
  if (err instanceof AbortedError) return err
  if (signal?.aborted === true) return new AbortedError(message, { cause: err })
  return err
}
