/**
 * The fetcher's view of the swarm. `join(digest)` advertises the blob in the DHT at once (a node
 * fetching a blob is a provider of it: a cold swarm finds itself while it downloads), then keeps
 * finding providers on a backoff schedule and opens a piece-protocol session with each, up to a
 * cap. A peer that opens a session with us about a blob we are fetching is one more source: we
 * open a session back. Banned peers are skipped; sessions close when the fetcher leaves.
 */
import type { Logger } from 'pino'
import type { ShoalMetrics } from '../api/metrics.ts'
import { BlobUnknownError } from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import type { BlobGeometry, BlobPeers, LiveBlob, PeerBlobSession, PeerSource } from '../interface/peers.ts'
import type { DhtContentRouting } from './content-routing.ts'
import type { PeerBans } from './peer-bans.ts'
import type { ClientSession } from './piece-client.ts'
import type { PieceExchange, SessionPeer } from './piece-exchange.ts'

export interface SwarmPeerSourceComponents {
  routing: DhtContentRouting
  exchange: PieceExchange
  bans: PeerBans
  logger: Logger
  /** This node's peer id. */
  peerId: string
  /** Peers connected now: asked directly, before the DHT answers. */
  connectedPeers: () => string[]
  metrics?: ShoalMetrics
}

export interface SwarmPeerSourceInit {
  /** How long one provider lookup may take. Default 2 s. */
  findTimeoutMs?: number
  /** Sessions per blob at most. Default 8. */
  maxPeers?: number
  /** How long a banned peer stays banned. Default 10 min. */
  banMs?: number
  /** Waits between provider lookups while a blob is fetched (the last one repeats). */
  findScheduleMs?: number[]
  /** Deadline of one session opening. Default 3 s. */
  openTimeoutMs?: number
}

const DEFAULT_FIND_SCHEDULE_MS = [100, 200, 400, 800, 1600, 3200, 5000]
// A peer that did not serve a blob is asked again no sooner than this.
const RETRY_PEER_MS = 1000
// A session cut under us is opened again after this.
const RECONNECT_MS = 50

/** See the module comment. */
export class SwarmPeerSource implements PeerSource {
  readonly #c: SwarmPeerSourceComponents
  readonly #init: Required<SwarmPeerSourceInit>
  readonly #log: Logger
  readonly #announced = new Set<string>()

  constructor(components: SwarmPeerSourceComponents, init: SwarmPeerSourceInit = {}) {
    this.#c = components
    this.#init = {
      findTimeoutMs: init.findTimeoutMs ?? 2000,
      maxPeers: init.maxPeers ?? 8,
      banMs: init.banMs ?? 10 * 60 * 1000,
      findScheduleMs: init.findScheduleMs ?? DEFAULT_FIND_SCHEDULE_MS,
      openTimeoutMs: init.openTimeoutMs ?? 3000
    }
    this.#log = components.logger.child({ component: 'swarm' })
  }

  join(digest: string, options: { size?: number } = {}): BlobPeers {
    this.announce(digest)
    return new BlobSwarm(this.#c, this.#init, this.#log, digest, options.size, (complete) => {
      if (!complete) this.withdraw(digest)
    })
  }

  announce(digest: string): void {
    if (this.#announced.has(digest)) return
    this.#announced.add(digest)
    const metrics = this.#c.metrics
    this.#c.routing.provide(digest).then(
      (accepted) => {
        metrics?.dhtOperations.inc({ op: 'provide', outcome: 'ok' })
        this.#log.debug({ digest, accepted }, 'announced')
      },
      (err) => {
        metrics?.dhtOperations.inc({ op: 'provide', outcome: 'error' })
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

/** One blob's swarm: discovery, sessions, bans. */
class BlobSwarm implements BlobPeers {
  readonly localPeerId: string
  readonly #c: SwarmPeerSourceComponents
  readonly #init: Required<SwarmPeerSourceInit>
  readonly #log: Logger
  readonly #digest: string
  readonly #size: number | undefined
  readonly #onLeave: (complete: boolean) => void
  readonly #sessions = new Map<string, ClientSession>()
  readonly #opening = new Set<string>()
  readonly #retryAt = new Map<string, number>()
  readonly #reconnected = new Set<string>()
  readonly #listeners = new Set<() => void>()
  readonly #abort = new AbortController()
  readonly #offInterest: () => void
  #unpublish: (() => void) | undefined
  readonly #unexpect: () => void
  #timer: NodeJS.Timeout | undefined
  #round = 0
  #ready: Promise<BlobGeometry | undefined>
  #left = false

  constructor(
    c: SwarmPeerSourceComponents,
    init: Required<SwarmPeerSourceInit>,
    log: Logger,
    digest: string,
    size: number | undefined,
    onLeave: (complete: boolean) => void
  ) {
    this.localPeerId = c.peerId
    this.#c = c
    this.#init = init
    this.#log = log
    this.#digest = digest
    this.#size = size
    this.#onLeave = onLeave
    this.#offInterest = c.exchange.onInterest((peerId, d) => {
      // It just asked us about this blob: it is fetching it too, whatever it said before.
      this.#retryAt.delete(peerId)
      if (d === digest) void this.#connect({ peerId, addresses: [] })
    })
    this.#unexpect = c.exchange.expect(digest)
    this.#ready = this.#discover()
  }

  ready(options: AbortOptions = {}): Promise<BlobGeometry | undefined> {
    const { signal } = options
    if (signal === undefined) return this.#ready
    let onAbort: (() => void) | undefined
    const aborted = new Promise<undefined>((resolve) => {
      onAbort = () => resolve(undefined)
      signal.addEventListener('abort', onAbort, { once: true })
    })
    return Promise.race([this.#ready, aborted]).finally(() => {
      if (onAbort) signal.removeEventListener('abort', onAbort)
    })
  }

  sessions(): PeerBlobSession[] {
    return [...this.#sessions.values()].filter((s) => s.open)
  }

  onChange(fn: () => void): () => void {
    this.#listeners.add(fn)
    return () => this.#listeners.delete(fn)
  }

  publish(blob: LiveBlob): void {
    this.#unpublish?.()
    this.#unpublish = this.#c.exchange.publish(blob)
  }

  ban(peerId: string, reason: string): void {
    this.#c.bans.ban(peerId, reason, this.#init.banMs)
  }

  leave(complete: boolean): void {
    if (this.#left) return
    this.#left = true
    clearTimeout(this.#timer)
    this.#abort.abort()
    this.#offInterest()
    this.#unexpect()
    this.#unpublish?.()
    for (const s of this.#sessions.values()) void s.close()
    this.#sessions.clear()
    this.#listeners.clear()
    this.#onLeave(complete)
  }

  /** The first lookup: resolves with the geometry of the first session, or undefined. */
  async #discover(): Promise<BlobGeometry | undefined> {
    // Peers that asked us for the blob first (they are fetching it), then neighbours: no DHT
    // round trip, and in a flash crowd they are fetching it too.
    const askers = this.#c.exchange.recentAskers(this.#digest)
    const neighbours = [...new Set([...askers, ...this.#c.connectedPeers()])]
      .slice(0, this.#init.maxPeers)
      .map((peerId) => this.#connect({ peerId, addresses: [] }))
    const found = await this.#find()
    const first = await firstOf([...neighbours, ...found.map((p) => this.#connect(p))])
    this.#schedule()
    if (first) return { size: first.size, pieceSize: first.pieceSize }
    const open = this.sessions()[0]
    return open ? { size: open.size, pieceSize: open.pieceSize } : undefined
  }

  #schedule(): void {
    if (this.#left) return
    const schedule = this.#init.findScheduleMs
    const wait = schedule[Math.min(this.#round++, schedule.length - 1)] as number
    this.#timer = setTimeout(() => {
      if (this.#sessions.size + this.#opening.size >= this.#init.maxPeers) {
        this.#schedule()
        return
      }
      this.#find().then(
        (found) => {
          for (const p of found) void this.#connect(p)
          this.#schedule()
        },
        () => this.#schedule()
      )
    }, wait)
    this.#timer.unref()
  }

  async #find(): Promise<SessionPeer[]> {
    const metrics = this.#c.metrics
    try {
      const found = await this.#c.routing.findProviders(this.#digest, {
        limit: this.#init.maxPeers * 2,
        timeoutMs: this.#init.findTimeoutMs,
        signal: this.#abort.signal
      })
      metrics?.dhtOperations.inc({ op: 'find-providers', outcome: 'ok' })
      return found.filter((p) => p.peerId !== this.localPeerId)
    } catch (err) {
      metrics?.dhtOperations.inc({ op: 'find-providers', outcome: 'error' })
      this.#log.debug({ digest: this.#digest, err: (err as Error).message }, 'provider lookup failed')
      return []
    }
  }

  /** Opens a session with `peer` unless one is open, opening, banned, or failed just now. */
  async #connect(peer: SessionPeer): Promise<ClientSession | undefined> {
    const id = peer.peerId
    if (this.#left || id === this.localPeerId) return undefined
    if (this.#sessions.has(id) || this.#opening.has(id)) return undefined
    if (this.#sessions.size + this.#opening.size >= this.#init.maxPeers) return undefined
    if (this.#c.bans.isBanned(id) || (this.#retryAt.get(id) ?? 0) > Date.now()) return undefined
    this.#opening.add(id)
    try {
      const session = await this.#c.exchange.openSession(peer, this.#digest, {
        size: this.#size,
        timeoutMs: this.#init.openTimeoutMs,
        signal: this.#abort.signal
      })
      if (this.#left) {
        void session.close()
        return undefined
      }
      this.#sessions.set(id, session)
      session.onEvent((e) => {
        if (e.type === 'closed' && this.#sessions.get(id) === session) {
          this.#log.debug(
            { digest: this.#digest, peer: id, err: session.closedBy?.message },
            'peer session closed'
          )
          this.#sessions.delete(id)
          // A session cut under us (a connection replaced, a peer restarting) is tried again
          // at once, once; a peer that keeps failing waits for the next discovery round.
          const again = !this.#reconnected.has(id)
          this.#reconnected.add(id)
          if (again && !this.#left) setTimeout(() => void this.#connect(peer), RECONNECT_MS).unref()
          else this.#retryAt.set(id, Date.now() + RETRY_PEER_MS)
        }
        this.#changed()
      })
      this.#log.debug({ digest: this.#digest, peer: id, held: session.held }, 'peer session open')
      this.#changed()
      return session
    } catch (err) {
      this.#retryAt.set(id, Date.now() + RETRY_PEER_MS)
      if (!(err instanceof BlobUnknownError)) {
        this.#log.debug({ digest: this.#digest, peer: id, err: (err as Error).message }, 'no session')
      }
      return undefined
    } finally {
      this.#opening.delete(id)
    }
  }

  #changed(): void {
    for (const fn of this.#listeners) fn()
  }
}

/** The first promise to resolve with a value, or undefined once all have settled without one. */
function firstOf<T>(promises: Promise<T | undefined>[]): Promise<T | undefined> {
  if (promises.length === 0) return Promise.resolve(undefined)
  return new Promise((resolve) => {
    let left = promises.length
    for (const p of promises) {
      p.then(
        (v) => {
          if (v !== undefined) resolve(v)
          else if (--left === 0) resolve(undefined)
        },
        () => {
          if (--left === 0) resolve(undefined)
        }
      )
    }
  })
}
