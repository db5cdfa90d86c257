/**
 * The fetcher's view of the swarm. `join(digest)` advertises the blob in the DHT at once (a node
 * fetching a blob is a provider of it: a cold swarm finds itself while it downloads), then keeps
 * finding providers on a backoff schedule and opens a piece-protocol session with each, up to a
 * cap. A peer that opens a session with us about a blob we are fetching is one more source: we
 * open a session back. Banned peers are skipped; sessions close when the fetcher leaves.
 *
 * A private blob (docs/decisions/0011-private-blobs.md) is never advertised under its digest:
 * only under a rendezvous key derived from the access key of a manifest referencing it, which
 * only nodes that read the manifest can compute. Sessions carry a proof made with that key.
 */
import type { Logger } from 'pino'
import type { ShoalMetrics } from '../api/metrics.ts'
import { rendezvousDigest } from '../content/access.ts'
import { BlobUnknownError, PeerDrainingError } from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import type {
  AnnounceOptions,
  BlobGeometry,
  BlobPeers,
  JoinOptions,
  LiveBlob,
  PeerBlobSession,
  PeerSource
} from '../interface/peers.ts'
import { shuffle } from '../shuffle.ts'
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
  /** Peers heard of, connected or not: asked after the connected ones. */
  knownPeers?: () => string[]
  metrics?: ShoalMetrics
}

export interface SwarmPeerSourceInit {
  /** How long one provider lookup may take. Default 2 s. */
  findTimeoutMs?: number
  /** Sessions per blob at most. Default 16. */
  maxPeers?: number
  /** How long a banned peer stays banned. Default 10 min. */
  banMs?: number
  /** Waits between provider lookups while a blob is fetched (the last one repeats). */
  findScheduleMs?: number[]
  /** Deadline of one session opening. Default 3 s. */
  openTimeoutMs?: number
}

// Sessions per blob: enough that a node sees most of a crowd's claims on the registry's pieces.
const DEFAULT_MAX_PEERS = 16
const DEFAULT_FIND_SCHEDULE_MS = [100, 200, 300, 400, 600, 800, 1200, 1600, 2400, 3200, 5000]
// A peer that did not serve a blob is asked again no sooner than this.
const RETRY_PEER_MS = 1000
// A peer that answered BLOB_UNKNOWN is asked again no sooner than this.
const RETRY_UNKNOWN_MS = 250
// A peer that answered PEER_DRAINING is leaving: asked again no sooner than this.
const RETRY_DRAINING_MS = 60_000
// After the first session of the first round, how long the other attempts may take to count.
const ROUND_GRACE_MS = 500
// A session cut under us is opened again after this.
const RECONNECT_MS = 50
// A private blob held is advertised under the rendezvous keys of its newest manifests only.
const MAX_ANNOUNCED_KEYS = 4

/** A joined blob: its size, how to show access to it, and the DHT key its swarm meets under. */
interface JoinedBlob {
  digest: string
  size: number | undefined
  accessKey: Uint8Array | undefined
  private: boolean
  /** Undefined for a private blob requested without a manifest: it has no swarm to find. */
  routingKey: string | undefined
}

/** See the module comment. */
export class SwarmPeerSource implements PeerSource {
  readonly #c: SwarmPeerSourceComponents
  readonly #init: Required<SwarmPeerSourceInit>
  readonly #log: Logger
  /** DHT keys this node provides: digests, and rendezvous keys of private blobs. */
  readonly #announced = new Set<string>()
  /** The DHT keys each blob is provided under. */
  readonly #keysOf = new Map<string, Set<string>>()
  /** Once draining, nothing is provided any more (see `drain`). */
  #draining = false

  constructor(components: SwarmPeerSourceComponents, init: SwarmPeerSourceInit = {}) {
    this.#c = components
    this.#init = {
      findTimeoutMs: init.findTimeoutMs ?? 2000,
      maxPeers: init.maxPeers ?? DEFAULT_MAX_PEERS,
      banMs: init.banMs ?? 10 * 60 * 1000,
      findScheduleMs: init.findScheduleMs ?? DEFAULT_FIND_SCHEDULE_MS,
      openTimeoutMs: init.openTimeoutMs ?? 3000
    }
    this.#log = components.logger.child({ component: 'swarm' })
  }

  join(digest: string, options: JoinOptions = {}): BlobPeers {
    const isPrivate = options.private === true
    const routingKey =
      options.accessKey !== undefined && isPrivate
        ? rendezvousDigest(options.accessKey, digest)
        : isPrivate
          ? undefined
          : digest
    if (routingKey !== undefined) this.#provide(digest, routingKey)
    const blob: JoinedBlob = {
      digest,
      size: options.size,
      accessKey: options.accessKey,
      private: isPrivate,
      routingKey
    }
    return new BlobSwarm(this.#c, this.#init, this.#log, blob, (complete) => {
      if (!complete) this.withdraw(digest)
    })
  }

  announce(digest: string, options: AnnounceOptions = {}): void {
    if (!options.private) {
      this.#provide(digest, digest)
      return
    }
    for (const key of (options.keys ?? []).slice(-MAX_ANNOUNCED_KEYS)) {
      this.#provide(digest, rendezvousDigest(key, digest))
    }
  }

  #provide(digest: string, routingKey: string): void {
    if (this.#draining) return
    let keys = this.#keysOf.get(digest)
    if (keys === undefined) {
      keys = new Set()
      this.#keysOf.set(digest, keys)
    }
    keys.add(routingKey)
    if (this.#announced.has(routingKey)) return
    this.#announced.add(routingKey)
    const metrics = this.#c.metrics
    this.#c.routing.provide(routingKey).then(
      (accepted) => {
        metrics?.dhtOperations.inc({ op: 'provide', outcome: 'ok' })
        this.#log.debug({ digest, accepted }, 'announced')
      },
      (err) => {
        metrics?.dhtOperations.inc({ op: 'provide', outcome: 'error' })
        this.#announced.delete(routingKey)
        this.#keysOf.get(digest)?.delete(routingKey)
        this.#log.warn({ digest, err: (err as Error).message }, 'announce failed')
      }
    )
  }

  withdraw(digest: string): void {
    void this.#withdraw(digest)
  }

  /** Removes a blob's provider records; resolves once they are gone (failures are dropped). */
  #withdraw(digest: string): Promise<unknown> {
    const keys = this.#keysOf.get(digest)
    this.#keysOf.delete(digest)
    const removals: Promise<void>[] = []
    for (const key of keys ?? []) {
      if (!this.#announced.delete(key)) continue
      removals.push(this.#c.routing.stopProviding(key).catch(() => undefined))
    }
    return Promise.all(removals)
  }

  /**
   * Stops advertising: withdraws every provider record this node holds and provides nothing
   * from now on (blobs joined or completed later included). Records other peers hold expire
   * on their own; peers that still come hear `PEER_DRAINING` from the exchange. Resolves with
   * the number of blobs withdrawn.
   */
  async drain(): Promise<number> {
    this.#draining = true
    const digests = [...this.#keysOf.keys()]
    await Promise.all(digests.map((d) => this.#withdraw(d)))
    return digests.length
  }

  /** DHT keys announced now (a blob's digest, or the rendezvous keys of a private blob). */
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
  readonly #blob: JoinedBlob
  readonly #onLeave: (complete: boolean) => void
  readonly #sessions = new Map<string, ClientSession>()
  /** Peers heard to be on this blob: sessions, askers, peer exchange. */
  readonly #heard = new Set<string>()
  /** Peers whose session closed and has not opened again: not members, whoever mentions them. */
  readonly #gone = new Set<string>()
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
    blob: JoinedBlob,
    onLeave: (complete: boolean) => void
  ) {
    const digest = blob.digest
    this.localPeerId = c.peerId
    this.#c = c
    this.#init = init
    this.#log = log
    this.#digest = digest
    this.#blob = blob
    this.#onLeave = onLeave
    this.#offInterest = c.exchange.onInterest((peerId, d) => {
      // It just asked us about this blob: it is fetching it too, whatever it said before.
      this.#retryAt.delete(peerId)
      if (d === digest) void this.#connect({ peerId, addresses: [] })
    })
    // A hello for a private blob must not wait for its transfer: how long the answer takes would
    // tell a peer without access that this node is about to hold it.
    this.#unexpect = blob.private ? () => {} : c.exchange.expect(digest)
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

  swarmMembers(): string[] {
    for (const id of this.#c.exchange.recentAskers(this.#digest)) this.#heard.add(id)
    for (const id of this.#sessions.keys()) this.#heard.add(id)
    return [...this.#heard].filter((id) => !this.#gone.has(id) && !this.#c.bans.isBanned(id))
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
    const nearby = this.#nearby()
    const neighbours = nearby.map((p) => this.#connect(p))
    // The DHT answers in parallel: neighbours usually answer first.
    const viaDht = this.#find().then((found) => Promise.allSettled(found.map((p) => this.#connect(p))))
    const fromDht = viaDht.then((results) => {
      for (const r of results) if (r.status === 'fulfilled' && r.value) return r.value
      return undefined
    })
    const attempts: Promise<unknown>[] = [...neighbours, viaDht]
    let first = await firstOf([...neighbours, fromDht])
    if (!first && nearby.length > 0) {
      // Neighbours that have not started on the blob yet (BLOB_UNKNOWN): in a flash crowd they
      // do within a moment. Ask once more before going it alone.
      await sleep(ROUND_GRACE_MS, this.#abort.signal)
      this.#retryAt.clear()
      first = await firstOf(this.#nearby().map((p) => this.#connect(p)))
    }
    // The round is over when every attempt has settled, or a moment after the first session:
    // the fetch then knows most of the crowd, and their claims, before it asks the registry.
    if (first) await Promise.race([Promise.allSettled(attempts), sleep(ROUND_GRACE_MS, this.#abort.signal)])
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
      // Neighbours again: in a flash crowd a neighbour may not have started on the blob at the
      // first round (it answered BLOB_UNKNOWN), and the DHT learns of providers only seconds
      // after they start.
      for (const p of this.#nearby()) void this.#connect(p)
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

  /**
   * Peers that asked us for the blob (they are fetching it), then connected neighbours, then
   * other peers this node knows of: no DHT round trip (a provide takes seconds to land), and in
   * a flash crowd they are fetching the blob too.
   */
  #nearby(): SessionPeer[] {
    const askers = this.#c.exchange.recentAskers(this.#digest)
    const known = shuffle(this.#c.knownPeers?.() ?? [])
    return [...new Set([...askers, ...this.#c.connectedPeers(), ...known])]
      .filter((id) => !this.#sessions.has(id) && !this.#opening.has(id))
      .slice(0, this.#init.maxPeers)
      .map((peerId) => ({ peerId, addresses: [] }))
  }

  async #find(): Promise<SessionPeer[]> {
    const metrics = this.#c.metrics
    const key = this.#blob.routingKey
    if (key === undefined) return []
    try {
      const found = await this.#c.routing.findProviders(key, {
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
        size: this.#blob.size,
        accessKey: this.#blob.accessKey,
        timeoutMs: this.#init.openTimeoutMs,
        signal: this.#abort.signal
      })
      if (this.#left) {
        void session.close()
        return undefined
      }
      this.#sessions.set(id, session)
      this.#gone.delete(id)
      session.onEvent((e) => {
        if (e.type === 'peers') {
          this.#meet(e.peers)
          return
        }
        if (e.type === 'closed' && this.#sessions.get(id) === session) {
          this.#log.debug(
            { digest: this.#digest, peer: id, err: session.closedBy?.message },
            'peer session closed'
          )
          this.#sessions.delete(id)
          // No longer a member for the registry split (it is one again if it comes back): a
          // dead member would keep its share of the registry's pieces from everyone.
          this.#heard.delete(id)
          this.#gone.add(id)
          // A session cut under us (a connection replaced, a peer restarting) is tried again
          // at once, once; a peer that keeps failing waits for the next discovery round.
          const again = !this.#reconnected.has(id)
          this.#reconnected.add(id)
          if (again && !this.#left) setTimeout(() => void this.#connect(peer), RECONNECT_MS).unref()
          else this.#retryAt.set(id, Date.now() + RETRY_PEER_MS)
        }
        this.#changed()
      })
      // Peers it told us of before we listened.
      this.#meet(session.peersHeard())
      this.#log.debug({ digest: this.#digest, peer: id, held: session.held }, 'peer session open')
      this.#changed()
      return session
    } catch (err) {
      // A peer that has not started on the blob yet may any moment (a crowd): ask it again soon.
      const unknown = err instanceof BlobUnknownError
      const leaving = err instanceof PeerDrainingError
      const wait = unknown ? RETRY_UNKNOWN_MS : leaving ? RETRY_DRAINING_MS : RETRY_PEER_MS
      this.#retryAt.set(id, Date.now() + wait)
      if (unknown) {
        this.#log.debug({ digest: this.#digest, peer: id }, 'peer does not have the blob (yet)')
      } else {
        this.#log.debug({ digest: this.#digest, peer: id, err: (err as Error).message }, 'no session')
      }
      return undefined
    } finally {
      this.#opening.delete(id)
    }
  }

  /** Peer exchange: others on this blob, met without waiting for the DHT. */
  #meet(peers: SessionPeer[]): void {
    if (peers.length === 0) return
    for (const p of peers) {
      if (p.peerId === this.localPeerId) continue
      this.#heard.add(p.peerId)
      void this.#connect(p)
    }
    this.#changed()
  }

  #changed(): void {
    for (const fn of this.#listeners) fn()
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve()
    const timer = setTimeout(done, ms)
    timer.unref()
    signal.addEventListener('abort', done, { once: true })
    function done() {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
  })
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
