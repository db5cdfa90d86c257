/**
 * The swarm model: N nodes and a registry on a flow-level network, under a virtual clock. Each
 * node asks for pieces with the real picker (`pickForPeer`, `pickForRegistry`), with a bounded
 * number of requests in flight per peer, among peers and to the registry, as the transfer's pump
 * does. The DHT is modelled as "every node knows every other after a lookup delay"; HAVEs reach
 * every peer after a fixed latency. Seeded: the same init gives the same result.
 */

import { DEFAULT_CLAIM_TTL_MS, DEFAULT_SWARM_PATIENCE_MS } from '../constants.ts'
import { type PeerView, type PickState, pickForPeer, pickForRegistry } from '../fetch/piece-picker.ts'
import { shuffle } from '../shuffle.ts'
import { EventQueue } from './event-queue.ts'
import { type Flow, FlowNetwork, type Link } from './flow-network.ts'
import { mulberry32 } from './random.ts'

/** A swarm to simulate; rates in bytes per second, times in seconds. */
export interface SwarmModelInit {
  nodes: number
  imageBytes: number
  pieces: number
  /** Each node's upload rate (one value for all, or one per node). */
  upload: number | readonly number[]
  /** Each node's download rate (one value for all, or one per node). */
  download: number | readonly number[]
  registryUpload: number
  seed: number
  /** Time from a node's arrival until it knows its peers (the DHT lookup). Default 0. */
  lookupDelay?: number
  /** Time from a piece's arrival until every peer sees the HAVE. Default 0. */
  haveLatency?: number
  /** Requests in flight to one peer. Default 2. */
  peerDepth?: number
  /** Requests in flight to all peers together. Default 8. */
  maxPeerFlights?: number
  /** Requests in flight to the registry. Default 2. */
  registryWindow?: number
  /** How long a `fetching` claim holds other nodes off a piece (ms, as the picker). Default 15 s. */
  claimTtlMs?: number
  /** Time without a new piece after which the registry may take any piece (s). Default 30 s. */
  patience?: number
  /** Called each time a node completes (done so far, all nodes, virtual time): for progress output. */
  onNodeDone?: (done: number, total: number, time: number) => void
}

/** What a run measured. */
export interface SwarmResult {
  /** Each node's completion time (seconds from the start). */
  completion: number[]
  /** Bytes the registry sent, counting cancelled partial transfers. */
  registryEgress: number
  /** Bytes each node uploaded to its peers. */
  uploaded: number[]
  /** The Kumar-Ross lower bound max(F/u_s, F/d_min, N·F/(u_s + Σu_i)). */
  tMin: number
  /** Flows started, piece transfers (including endgame duplicates). */
  flows: number
}

interface Transfer {
  to: SimNode
  from: SimNode | undefined
  piece: number
}

const REGISTRY = 'registry'

class SimNode implements PeerView {
  readonly peerId: string
  readonly held: Uint8Array
  /** Pieces whose HAVE has reached the peers. */
  readonly offered: Uint8Array
  readonly missing = new Set<number>()
  readonly flights = new Map<number, Flow<Transfer>[]>()
  readonly claims = new Map<number, number>()
  readonly peerLoad = new Map<string, number>()
  registryLoad = 0
  joined = false
  lastProgress = 0
  completedAt = Number.POSITIVE_INFINITY
  uploaded = 0

  constructor(
    readonly index: number,
    readonly up: Link,
    readonly down: Link,
    count: number,
    readonly registryStart: number,
    /** The model's clock (ms) and how often a claim is renewed (ms). */
    readonly now: () => number,
    readonly renewMs: number
  ) {
    this.peerId = `n${index}`
    this.held = new Uint8Array(count)
    this.offered = new Uint8Array(count)
    for (let i = 0; i < count; i++) this.missing.add(i)
  }

  has(index: number): boolean {
    return this.offered[index] === 1
  }

  fetchingSince(index: number): number | undefined {
    const since = this.claims.get(index)
    if (since === undefined) return undefined
    // The transfer renews its claim every third of the claim time while the piece is on its
    // way: seen from a peer, the claim is never older than that.
    if ((this.flights.get(index)?.length ?? 0) > 0) return Math.max(since, this.now() - this.renewMs)
    return since
  }

  get peerFlights(): number {
    let n = 0
    for (const v of this.peerLoad.values()) n += v
    return n
  }
}

/** Runs the swarm to completion and returns what it measured. */
export function runSwarmModel(init: SwarmModelInit): SwarmResult {
  return new SwarmModel(init).run()
}

class SwarmModel {
  readonly #init: SwarmModelInit
  readonly #random: () => number
  readonly #queue = new EventQueue()
  readonly #net = new FlowNetwork<Transfer>()
  readonly #nodes: SimNode[] = []
  readonly #registryUp: Link
  readonly #pieceBytes: number
  readonly #owner: number[] = []
  #registryEgress = 0
  #flows = 0
  #unfinished: number

  constructor(init: SwarmModelInit) {
    this.#init = init
    this.#random = mulberry32(init.seed)
    this.#pieceBytes = init.imageBytes / init.pieces
    this.#registryUp = { name: 'registry.up', capacity: init.registryUpload }
    for (let n = 0; n < init.nodes; n++) {
      const up = { name: `n${n}.up`, capacity: rate(init.upload, n) }
      const down = { name: `n${n}.down`, capacity: rate(init.download, n) }
      const start = Math.floor(this.#random() * init.pieces)
      const renewMs = (init.claimTtlMs ?? DEFAULT_CLAIM_TTL_MS) / 3
      this.#nodes.push(new SimNode(n, up, down, init.pieces, start, () => this.#queue.now * 1000, renewMs))
    }
    // Rendezvous hashing over all nodes: every node knows the same members, so one owner each.
    for (let i = 0; i < init.pieces; i++) {
      let best = 0
      let bestHash = -1
      for (let n = 0; n < init.nodes; n++) {
        const h = mix(init.seed, n, i)
        if (h > bestHash) {
          bestHash = h
          best = n
        }
      }
      this.#owner.push(best)
    }
    this.#unfinished = init.nodes
  }

  run(): SwarmResult {
    const lookup = this.#init.lookupDelay ?? 0
    for (const node of this.#nodes) {
      this.#queue.schedule(lookup, () => {
        node.joined = true
        node.lastProgress = this.#queue.now
        this.#pump(node)
      })
    }
    while (this.#unfinished > 0) {
      const tNet = this.#net.nextCompletion()
      const tEv = this.#queue.peekTime()
      if (tNet === Number.POSITIVE_INFINITY && tEv === Number.POSITIVE_INFINITY) {
        throw new Error(`swarm model stalled with ${this.#unfinished} nodes unfinished`)
      }
      if (tNet <= tEv) {
        this.#queue.now = tNet
        for (const f of this.#net.advance(tNet)) this.#landed(f)
      } else {
        this.#net.advance(tEv)
        this.#queue.pop()?.()
      }
    }
    const n = this.#init.nodes
    const f = this.#init.imageBytes
    const uploads = this.#nodes.map((x) => x.up.capacity)
    const minDown = Math.min(...this.#nodes.map((x) => x.down.capacity))
    const sumUp = uploads.reduce((a, b) => a + b, 0)
    return {
      completion: this.#nodes.map((x) => x.completedAt),
      registryEgress: this.#registryEgress,
      uploaded: this.#nodes.map((x) => x.uploaded),
      tMin: Math.max(
        f / this.#init.registryUpload,
        f / minDown,
        (n * f) / (this.#init.registryUpload + sumUp)
      ),
      flows: this.#flows
    }
  }

  #landed(flow: Flow<Transfer>): void {
    const { to, from, piece } = flow.tag
    const now = this.#queue.now
    this.#settle(flow)
    if (from === undefined) this.#registryEgress += this.#pieceBytes
    else from.uploaded += this.#pieceBytes
    if (to.held[piece] === 1) return
    to.held[piece] = 1
    to.missing.delete(piece)
    to.lastProgress = now
    // Endgame duplicates of this piece are no longer needed.
    for (const other of [...(to.flights.get(piece) ?? [])]) {
      this.#net.cancel(other)
      this.#settle(other)
      const sent = this.#pieceBytes - other.remaining
      if (other.tag.from === undefined) this.#registryEgress += sent
      else other.tag.from.uploaded += sent
    }
    to.flights.delete(piece)
    if (to.missing.size === 0) {
      to.completedAt = now
      this.#unfinished--
      this.#init.onNodeDone?.(this.#init.nodes - this.#unfinished, this.#init.nodes, now)
    }
    this.#queue.schedule(now + (this.#init.haveLatency ?? 0), () => {
      to.offered[piece] = 1
      // The claim holds until the HAVE is out, so no one takes the piece from the registry between.
      to.claims.delete(piece)
      for (const peer of this.#nodes) {
        if (peer !== to && peer.joined && !peer.held[piece]) this.#pump(peer, to)
      }
    })
    this.#pump(to)
  }

  /** Forgets `flow` in its receiver's books. */
  #settle(flow: Flow<Transfer>): void {
    const { to, from, piece } = flow.tag
    const list = to.flights.get(piece)
    if (list !== undefined) {
      const k = list.indexOf(flow)
      if (k >= 0) list.splice(k, 1)
      if (list.length === 0) to.flights.delete(piece)
    }
    if (from === undefined) to.registryLoad--
    else to.peerLoad.set(from.peerId, (to.peerLoad.get(from.peerId) ?? 1) - 1)
  }

  /** Starts as many requests as `node` may; only from `only` when just its HAVE changed. */
  #pump(node: SimNode, only?: SimNode): void {
    if (!node.joined || node.missing.size === 0) return
    const init = this.#init
    const depth = init.peerDepth ?? 2
    const maxPeer = init.maxPeerFlights ?? 8
    const window = init.registryWindow ?? 2
    let peerFlights = node.peerFlights
    if (peerFlights >= maxPeer && node.registryLoad >= window) return
    const nowMs = this.#queue.now * 1000
    const peers = this.#nodes.filter((p) => p !== node)
    const state: PickState = {
      missing: node.missing,
      inFlight: sources(node),
      priority: [],
      heldCount: node.missing.size === init.pieces ? 0 : init.pieces - node.missing.size,
      count: init.pieces,
      peers,
      now: nowMs,
      claimTtlMs: init.claimTtlMs ?? DEFAULT_CLAIM_TTL_MS,
      impatient: this.#queue.now - node.lastProgress > (init.patience ?? DEFAULT_SWARM_PATIENCE_MS / 1000),
      registryStart: node.registryStart,
      random: this.#random
    }
    const sessions = only === undefined ? shuffle(peers, this.#random) : [only]
    for (const s of sessions) {
      if (peerFlights >= maxPeer) break
      while ((node.peerLoad.get(s.peerId) ?? 0) < depth && peerFlights < maxPeer) {
        const i = pickForPeer(s, state)
        if (i === undefined) break
        this.#launch(node, i, s)
        peerFlights++
        state.inFlight = sources(node)
      }
    }
    const starving = peers.every((s) => (node.peerLoad.get(s.peerId) ?? 0) === 0)
    if (!starving) state.owns = (i) => this.#owner[i] === node.index
    while (node.registryLoad < window) {
      const i = pickForRegistry(state)
      if (i === undefined) break
      this.#launch(node, i, undefined)
      state.inFlight = sources(node)
    }
  }

  #launch(node: SimNode, piece: number, from: SimNode | undefined): void {
    const links = from === undefined ? [this.#registryUp, node.down] : [from.up, node.down]
    const flow = this.#net.start(links, this.#pieceBytes, { to: node, from, piece })
    this.#flows++
    let list = node.flights.get(piece)
    if (list === undefined) {
      list = []
      node.flights.set(piece, list)
    }
    list.push(flow)
    if (!node.claims.has(piece)) node.claims.set(piece, this.#queue.now * 1000)
    if (from === undefined) node.registryLoad++
    else node.peerLoad.set(from.peerId, (node.peerLoad.get(from.peerId) ?? 0) + 1)
  }
}

function sources(node: SimNode): Map<number, string[]> {
  const out = new Map<number, string[]>()
  for (const [i, flows] of node.flights) {
    out.set(
      i,
      flows.map((f) => f.tag.from?.peerId ?? REGISTRY)
    )
  }
  return out
}

function rate(r: number | readonly number[], n: number): number {
  if (typeof r === 'number') return r
  const v = r[n]
  if (v === undefined) throw new RangeError(`no rate for node ${n}`)
  return v
}

/** A 32-bit hash of (seed, node, piece) for rendezvous hashing. */
function mix(seed: number, node: number, piece: number): number {
  let h = (seed ^ Math.imul(node + 1, 0x9e3779b1) ^ Math.imul(piece + 1, 0x85ebca77)) >>> 0
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d)
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b)
  return (h ^ (h >>> 16)) >>> 0
}
