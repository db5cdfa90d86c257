/**
 * The swarm model: nodes and a registry on a flow-level network (`flow-network.ts`), under a
 * virtual clock. Each node schedules its requests with the transfer's own pass
 * (`planRequests`, which runs the real `pickForPeer` and `pickForRegistry`) and splits the
 * registry's pieces with the transfer's `assignRegistryPieces`.
 *
 * What stands in for the rest of the agent:
 * - the DHT: a node that arrives spends `lookupDelay` finding the blob's providers (counted as
 *   α·⌈log2 N⌉ messages per lookup, plus k stores per provide), then connects to up to
 *   `maxPeers` random members (as the DHT and peer exchange give it), and they to it;
 * - HAVEs and claims reach a node's neighbours after `haveLatency`; members know which members
 *   fetch from the registry (as they all rank the same members the same way);
 * - a peer serves at most `concurrentUploads` pieces at once and turns further requests away; as
 *   the agent on `PIECE_BUSY`, the refused node leaves that peer alone for `busyRetry` and asks
 *   again (with `busyRetry: 0` it waits instead, and the freed slot goes to the node that wants
 *   the uploader's rarest piece: an uploader's choice the agent does not make);
 * - a node that arrived can be found by others at once (it provided the blob), so a crowd that
 *   arrives together meshes at random;
 * - faults: churn (nodes leave and fresh ones arrive), nodes killed, the registry going down,
 *   malicious peers that offer every piece and send garbage (caught by the piece hash, and
 *   banned).
 * Seeded: the same init gives the same result.
 */
import {
  BUSY_BACKOFF_MS,
  DEFAULT_CLAIM_TTL_MS,
  DEFAULT_CONCURRENT_UPLOADS,
  DEFAULT_REGISTRY_FETCHERS,
  DEFAULT_STARVING_TAKES_ANY,
  DEFAULT_SWARM_PATIENCE_MS
} from '../constants.ts'
import { ENDGAME_PIECES, type PickState } from '../fetch/piece-picker.ts'
import { assignRegistryPieces, planRequests } from '../fetch/request-plan.ts'
import { shuffle } from '../shuffle.ts'
import { EventQueue } from './event-queue.ts'
import { type Flow, FlowNetwork, type Link } from './flow-network.ts'
import { mulberry32 } from './random.ts'
import { SimNode, type Transfer } from './sim-node.ts'
import { type MessageCounts, type SwarmTimeline, TimelineRecorder } from './timeline.ts'

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
  /** When each node starts its pull (seconds). Default: all at 0. */
  arrivals?: readonly number[]
  /** Time from a node's arrival until it knows its peers (the DHT lookup). Default 0. */
  lookupDelay?: number
  /** Time from a piece's arrival until the neighbours see the HAVE. Default 0. */
  haveLatency?: number
  /** Neighbours a node connects to (it accepts up to twice as many). Default: everyone. */
  maxPeers?: number
  /** Pieces a node uploads at once; further requests are turned away. Default 2 (as the agent). */
  concurrentUploads?: number
  /**
   * What a node turned away does (s). Above 0, as the agent: it leaves that peer alone for this
   * long and then asks again. 0: it waits on the peer, and the slot that frees goes to whoever
   * wants the peer's rarest piece (an uploader's choice the agent does not make). Default 0.1
   * (as the agent).
   */
  busyRetry?: number
  /**
   * Seconds of a sender's uplink its buffers hold (socket and link queue): an upload slot frees
   * when the piece is handed over, this long before the last bytes arrive. Default 0.
   */
  sendBuffer?: number
  /** Requests in flight to one peer. Default 4 (as the agent). */
  peerDepth?: number
  /** Requests in flight to all peers together. Default: no limit (as an agent without a download cap). */
  maxPeerFlights?: number
  /** Requests in flight to the registry, per node. Default 4 (as the agent). */
  registryWindow?: number
  /** Members that take pieces from the registry. Default 4 (as the agent). */
  registryFetchers?: number
  /** A node with nothing to ask of peers may take any unclaimed piece. Default false (as the agent). */
  starvingTakesAny?: boolean
  /** How long a `fetching` claim holds other nodes off a piece (ms, as the picker). */
  claimTtlMs?: number
  /** Time without a new piece after which the registry may take any unclaimed piece (s). */
  patience?: number
  faults?: SwarmFaults
  /** The mostly-flat lower bound used to space timeline samples; computed when absent. */
  sampleEvery?: number
  /** Most flows one change refills in the network model (see `FlowNetworkOptions`). */
  localLimit?: number
  /** Called each time a node completes (done so far, all nodes, virtual time): for progress. */
  onNodeDone?: (done: number, total: number, time: number) => void
  /** Called every 4,096 pieces delivered (pieces so far, pieces in all, virtual time): for progress. */
  onPieces?: (delivered: number, total: number, time: number) => void
}

export interface SwarmFaults {
  /** Fraction of the nodes that leave per minute, each replaced by a fresh node. */
  churnPerMinute?: number
  /** Churn stops at this time (s). Default: 3 T_min. */
  churnUntil?: number
  /** Nodes killed (not replaced) at a time. */
  kill?: { at: number; count: number }
  /** The registry stops answering at this time (s), or once it has sent every piece once. */
  registryDownAfter?: number | 'first-copy'
  /** Nodes that offer every piece and send garbage. */
  malicious?: number
}

/** What a run measured. */
export interface SwarmResult {
  /** Each node's pull time (seconds from its arrival), for nodes that stayed; Infinity if it never finished. */
  completion: number[]
  /** Bytes the registry sent, counting cancelled partial transfers. */
  registryEgress: number
  /** Bytes each node uploaded to its peers. */
  uploaded: number[]
  /** The Kumar-Ross lower bound max(F/u_s, F/d_min, N·F/(u_s + Σu_i)). */
  tMin: number
  /** Flows started, piece transfers (including endgame duplicates). */
  flows: number
  timeline: SwarmTimeline
  messages: MessageCounts
  /** Nodes that left or were killed before completing. */
  departed: number
  /** Corrupt pieces received from malicious peers (all caught by the piece hash). */
  corruptPieces: number
  /** Virtual time at which the run ended. */
  endedAt: number
}

const REGISTRY = 'registry'
/** Kademlia's parallelism and replication, for counting DHT messages. */
const DHT_ALPHA = 3
const DHT_K = 20

/** Runs the swarm to completion and returns what it measured. */
export function runSwarmModel(init: SwarmModelInit): SwarmResult {
  return new SwarmModel(init).run()
}

/** The lower bound T_min = max(F/u_s, F/d_min, N·F/(u_s + Σu_i)) for `init`. */
export function lowerBound(init: SwarmModelInit): number {
  const n = init.nodes
  const f = init.imageBytes
  let sumUp = 0
  let minDown = Number.POSITIVE_INFINITY
  for (let i = 0; i < n; i++) {
    sumUp += rate(init.upload, i)
    minDown = Math.min(minDown, rate(init.download, i))
  }
  return Math.max(f / init.registryUpload, f / minDown, (n * f) / (init.registryUpload + sumUp))
}

class SwarmModel {
  readonly #init: SwarmModelInit
  readonly #random: () => number
  readonly #queue = new EventQueue()
  readonly #net: FlowNetwork<Transfer>
  readonly #nodes: SimNode[] = []
  readonly #registryUp: Link
  readonly #pieceBytes: number
  readonly #tMin: number
  readonly #recorder: TimelineRecorder
  /** Replicas of each piece among the nodes present (not counting malicious ones). */
  readonly #replicas: Int32Array
  readonly #sentByRegistry: Uint8Array
  #sentOnce = 0
  #owner: SimNode[] | undefined
  #fetcherSet: Set<SimNode> | undefined
  #registryOn = true
  #registryEgress = 0
  #flows = 0
  #corrupt = 0
  #unfinished = 0
  #completed = 0
  #delivered = 0
  #pendingArrivals = 0

  constructor(init: SwarmModelInit) {
    this.#init = init
    this.#random = mulberry32(init.seed)
    this.#pieceBytes = init.imageBytes / init.pieces
    this.#registryUp = { name: 'registry.up', capacity: init.registryUpload }
    this.#net = new FlowNetwork<Transfer>({ localLimit: init.localLimit ?? 512 })
    this.#tMin = lowerBound(init)
    this.#recorder = new TimelineRecorder(init.sampleEvery ?? this.#tMin / 100)
    this.#replicas = new Int32Array(init.pieces)
    this.#sentByRegistry = new Uint8Array(init.pieces)
    for (let n = 0; n < init.nodes; n++) this.#addNode(rate(init.upload, n), rate(init.download, n))
    const bad = Math.min(init.faults?.malicious ?? 0, init.nodes - 1)
    for (const node of shuffle(this.#nodes, this.#random).slice(0, bad)) node.malicious = true
  }

  run(): SwarmResult {
    const init = this.#init
    for (const node of this.#nodes) this.#arrive(node, init.arrivals?.[node.index] ?? 0)
    this.#scheduleFaults()
    while (this.#unfinished > 0 || this.#pendingArrivals > 0) {
      const tNet = this.#net.nextCompletion()
      const tEv = this.#queue.peekTime()
      if (tNet === Number.POSITIVE_INFINITY && tEv === Number.POSITIVE_INFINITY) break
      if (tNet <= tEv) {
        this.#queue.now = tNet
        for (const f of this.#net.advance(tNet)) this.#landed(f)
      } else {
        // A flow may end within rounding of the event: it lands first, at the event's time.
        this.#queue.now = tEv
        for (const f of this.#net.advance(tEv)) this.#landed(f)
        this.#queue.pop()?.()
      }
    }
    const now = this.#queue.now
    this.#sample(true)
    const stayed = this.#nodes.filter((x) => !x.left && !x.malicious)
    return {
      completion: stayed.map((x) => x.completedAt - x.arrival),
      registryEgress: this.#registryEgress,
      uploaded: stayed.map((x) => x.uploaded),
      tMin: this.#tMin,
      flows: this.#flows,
      timeline: this.#recorder.timeline,
      messages: { dht: stayed.map((x) => x.dhtMessages), control: stayed.map((x) => x.controlMessages) },
      departed: this.#nodes.filter((x) => x.left && !x.done).length,
      corruptPieces: this.#corrupt,
      endedAt: now
    }
  }

  #addNode(up: number, down: number): SimNode {
    const index = this.#nodes.length
    const renewMs = (this.#init.claimTtlMs ?? DEFAULT_CLAIM_TTL_MS) / 3
    const node = new SimNode(
      index,
      { name: `n${index}.up`, capacity: up },
      { name: `n${index}.down`, capacity: down },
      this.#init.pieces,
      Math.floor(this.#random() * this.#init.pieces),
      () => this.#queue.now * 1000,
      renewMs
    )
    this.#nodes.push(node)
    return node
  }

  /** `node` starts its pull at `at`: a DHT provide and lookup, then it joins the swarm. */
  #arrive(node: SimNode, at: number): void {
    this.#pendingArrivals++
    this.#queue.schedule(at, () => {
      this.#pendingArrivals--
      if (node.left) return
      node.arrival = this.#queue.now
      node.arrived = true
      if (!node.malicious) this.#unfinished++
      node.dhtMessages += 2 * DHT_ALPHA * Math.ceil(Math.log2(Math.max(2, this.#init.nodes))) + DHT_K
      this.#queue.schedule(this.#queue.now + this.#lookupDelay(), () => this.#join(node))
    })
  }

  #lookupDelay(): number {
    return this.#init.lookupDelay ?? 0
  }

  #join(node: SimNode): void {
    if (node.left) return
    const max = this.#init.maxPeers ?? Number.POSITIVE_INFINITY
    // Every node that has arrived has provided the blob, so a lookup may find it whether or not
    // its own lookup is done: a crowd that arrives together meshes at random, not in the order
    // its lookups end (which made a chain of the last to join, hundreds of hops long).
    const members = this.#nodes.filter(
      (x) => x.arrived && !x.left && x !== node && x.neighbours.size < 2 * max
    )
    for (const peer of shuffle(members, this.#random).slice(0, max)) node.connect(peer)
    node.joined = true
    node.lastProgress = this.#queue.now
    node.controlMessages += node.neighbours.size
    this.#owner = undefined
    if (node.malicious) {
      for (let i = 0; i < this.#init.pieces; i++) node.offer(i)
    }
    // After every node joining now has joined: then the members are known.
    this.#queue.schedule(this.#queue.now, () => {
      this.#pump(node)
      for (const peer of node.neighbours) this.#pump(peer, node)
    })
    this.#watch(node)
  }

  #leave(node: SimNode): void {
    if (node.left) return
    node.left = true
    if (node.joined && !node.done && !node.malicious) this.#unfinished--
    if (!node.malicious)
      for (let i = 0; i < this.#init.pieces; i++)
        if (node.held[i]) this.#replicas[i] = (this.#replicas[i] ?? 1) - 1
    this.#owner = undefined
    const touched = new Set<SimNode>()
    for (const flow of this.#net.flowsOf(node.up).concat(this.#net.flowsOf(node.down))) {
      this.#net.cancel(flow)
      this.#account(flow)
      this.#settle(flow)
      touched.add(flow.tag.to)
    }
    for (const peer of [...node.neighbours]) {
      node.disconnect(peer)
      touched.add(peer)
    }
    touched.delete(node)
    for (const peer of touched) this.#pump(peer)
  }

  #scheduleFaults(): void {
    const f = this.#init.faults
    if (f === undefined) return
    if (f.churnPerMinute !== undefined && f.churnPerMinute > 0) {
      const perSecond = (f.churnPerMinute * this.#init.nodes) / 60
      const until = f.churnUntil ?? 3 * this.#tMin
      let t = 0
      for (;;) {
        t += -Math.log(1 - this.#random()) / perSecond
        if (t > until) break
        this.#queue.schedule(t, () => this.#churn())
      }
    }
    if (f.kill !== undefined) {
      const { at, count } = f.kill
      this.#queue.schedule(at, () => {
        const alive = this.#nodes.filter((x) => !x.left && !x.malicious)
        for (const node of shuffle(alive, this.#random).slice(0, count)) this.#leave(node)
      })
    }
    if (typeof f.registryDownAfter === 'number') {
      this.#queue.schedule(f.registryDownAfter, () => this.#registryDown())
    }
  }

  /** One node leaves and a fresh one with the same links arrives. */
  #churn(): void {
    if (this.#unfinished === 0) return
    const alive = this.#nodes.filter((x) => !x.left && !x.malicious)
    const gone = alive[Math.floor(this.#random() * alive.length)]
    if (gone === undefined) return
    this.#leave(gone)
    this.#arrive(this.#addNode(gone.up.capacity, gone.down.capacity), this.#queue.now)
  }

  #registryDown(): void {
    if (!this.#registryOn) return
    this.#registryOn = false
    for (const flow of this.#net.flowsOf(this.#registryUp)) {
      this.#net.cancel(flow)
      this.#account(flow)
      this.#settle(flow)
      this.#pump(flow.tag.to)
    }
  }

  /** Checks `node` again once its patience may have run out. */
  #watch(node: SimNode): void {
    if (node.watching) return
    node.watching = true
    const patience = this.#init.patience ?? DEFAULT_SWARM_PATIENCE_MS / 1000
    this.#queue.schedule(node.lastProgress + patience * 1.0001, () => {
      node.watching = false
      if (node.left || node.done) return
      // Progress since (its own or its neighbours'): look again when that runs out.
      if (this.#queue.now - node.lastProgress <= patience) this.#watch(node)
      else this.#pump(node)
    })
  }

  /** Counts the bytes a flow moved before it was cancelled. */
  #account(flow: Flow<Transfer>): void {
    const sent = flow.bytes - flow.remaining
    if (flow.tag.from === undefined) this.#registryEgress += sent
    else flow.tag.from.uploaded += sent
  }

  #landed(flow: Flow<Transfer>): void {
    const { from, piece } = flow.tag
    if (flow.tag.head === true) {
      this.#handedOver(flow)
      return
    }
    this.#settle(flow)
    if (from === undefined) {
      this.#registryEgress += this.#pieceBytes
      if (this.#sentByRegistry[piece] === 0) {
        this.#sentByRegistry[piece] = 1
        if (++this.#sentOnce === this.#init.pieces && this.#init.faults?.registryDownAfter === 'first-copy')
          this.#registryDown()
      }
    } else from.uploaded += flow.bytes
    // The slot `from` freed goes to the nodes it turned away, once this landing is recorded.
    try {
      this.#record(flow)
    } finally {
      if (from !== undefined) this.#wake(from)
    }
  }

  #record(flow: Flow<Transfer>): void {
    const { to, from, piece } = flow.tag
    const now = this.#queue.now
    if (from?.malicious) {
      // The piece hash catches it: the node drops the piece and stops asking that peer.
      this.#corrupt++
      to.banned.add(from)
      this.#pump(to)
      return
    }
    if (to.held[piece] === 1 || to.left) {
      this.#pump(to)
      return
    }
    to.held[piece] = 1
    to.missing.delete(piece)
    if ((++this.#delivered & 0xfff) === 0)
      this.#init.onPieces?.(this.#delivered, this.#init.nodes * this.#init.pieces, now)
    this.#replicas[piece] = (this.#replicas[piece] ?? 0) + 1
    to.lastProgress = now
    this.#watch(to)
    // Endgame duplicates of this piece are no longer needed.
    for (const other of [...(to.flights.get(piece) ?? [])]) {
      this.#net.cancel(other)
      this.#account(other)
      this.#settle(other)
      if (other.tag.from !== undefined) this.#wake(other.tag.from)
    }
    if (to.done) {
      to.completedAt = now
      this.#unfinished--
      this.#completed++
      this.#init.onNodeDone?.(this.#completed, this.#init.nodes, now)
    }
    this.#sample(false)
    this.#queue.schedule(now + (this.#init.haveLatency ?? 0), () => {
      if (to.left) return
      to.offer(piece)
      // The claim holds until the HAVE is out, so no one takes the piece from the registry between.
      to.claims.delete(piece)
      to.controlMessages += to.neighbours.size
      for (const peer of to.neighbours) if (!peer.held[piece]) this.#pump(peer, to)
    })
    this.#pump(to)
  }

  /** A slot of `uploader` freed: the neighbours it turned away may ask again. */
  #wake(uploader: SimNode): void {
    if (uploader.waiters.size === 0) return
    // The uploader serves first whoever wants its rarest piece: that piece's spread is what
    // the crowd waits on.
    const waiting = [...uploader.waiters].map((w) => ({ w, r: this.#rarestWanted(w, uploader) }))
    waiting.sort((a, b) => a.r - b.r)
    uploader.waiters.clear()
    for (const { w } of waiting) this.#pump(w, uploader)
  }

  /** Forgets `flow` in its receiver's and sender's books. */
  #settle(flow: Flow<Transfer>): void {
    const { to, from, piece } = flow.tag
    to.flightEnds++
    const list = to.flights.get(piece)
    if (list !== undefined) {
      const k = list.indexOf(flow)
      if (k >= 0) list.splice(k, 1)
      if (list.length === 0) {
        to.flights.delete(piece)
        to.sources.delete(piece)
      } else to.sources.set(piece, list.map(sourceOf))
    }
    if (from === undefined) to.registryLoad--
    else {
      to.peerLoad.set(from, (to.peerLoad.get(from) ?? 1) - 1)
      to.peerFlights--
      if (flow.tag.slotFreed !== true) from.uploading--
    }
  }

  /** The members that own registry pieces. */
  #fetchers(): ReadonlySet<SimNode> {
    this.#owners()
    this.#fetcherSet ??= new Set(this.#owner)
    return this.#fetcherSet
  }

  #owners(): SimNode[] {
    if (this.#owner === undefined) {
      this.#fetcherSet = undefined
      const members = this.#nodes.filter((x) => x.joined && !x.left && !x.malicious)
      const seed = this.#init.seed
      this.#owner = assignRegistryPieces(
        members,
        this.#init.pieces,
        this.#init.registryFetchers ?? DEFAULT_REGISTRY_FETCHERS,
        (m) => mix(seed, m.index, -1),
        (m, i) => mix(seed, m.index, i)
      )
    }
    return this.#owner
  }

  /** Starts as many requests as `node` may; only to `only` when just its offer changed. */
  #pump(node: SimNode, only?: SimNode): void {
    if (!node.joined || node.left || node.done || node.malicious) return
    const init = this.#init
    const impatient =
      this.#queue.now - node.lastProgress > (init.patience ?? DEFAULT_SWARM_PATIENCE_MS / 1000)
    const starvingTakesAny = init.starvingTakesAny ?? DEFAULT_STARVING_TAKES_ANY
    const peerDepth = init.peerDepth ?? 4
    const maxPeerFlights = init.maxPeerFlights ?? Number.POSITIVE_INFINITY
    // Passes that cannot launch anything are skipped (most wakes of a large crowd): a node that
    // owns no registry piece asks the registry only when impatient or starving.
    const window = this.#registryOn ? (init.registryWindow ?? 4) : 0
    const registry =
      node.registryLoad < window && (impatient || starvingTakesAny || this.#fetchers().has(node))
    const peerRoom =
      node.peerFlights < maxPeerFlights && (only === undefined || (node.peerLoad.get(only) ?? 0) < peerDepth)
    if (!registry && !peerRoom) return
    const nowMs = this.#queue.now * 1000
    const now = this.#queue.now
    const peers: SimNode[] = []
    // Peers that turned this node away a moment ago are left alone until then (not asked at all).
    const sessions: SimNode[] = []
    let resting = false
    for (const p of node.neighbours) {
      if (node.banned.has(p)) continue
      peers.push(p)
      if ((node.busyUntil.get(p) ?? 0) > now) resting = true
      else if (
        (only === undefined || p === only) &&
        node.idlePeers.get(p) !== node.idleKey(p, ENDGAME_PIECES)
      )
        sessions.push(p)
    }
    const owner = this.#owners()
    const state: PickState = {
      missing: node.missing,
      inFlight: node.sources,
      priority: [],
      heldCount: init.pieces - node.missing.size,
      count: init.pieces,
      peers,
      now: nowMs,
      claimTtlMs: init.claimTtlMs ?? DEFAULT_CLAIM_TTL_MS,
      impatient,
      registryStart: node.registryStart,
      availability: (i) => node.availability[i] ?? 0,
      random: this.#random
    }
    const slots = init.concurrentUploads ?? DEFAULT_CONCURRENT_UPLOADS
    const retry = this.#busyRetry
    const plan = planRequests({
      state,
      sessions: !peerRoom ? [] : only === undefined ? shuffle(sessions, this.#random) : sessions,
      peerLoad: (p) => node.peerLoad.get(p) ?? 0,
      peerFlights: node.peerFlights,
      capacity: (p) => slots - p.uploading,
      peerDepth,
      maxPeerFlights,
      registryLoad: node.registryLoad,
      registryWindow: registry ? window : 0,
      owns: () => (i) => owner[i] === node,
      starvingTakesAny
    })
    if (retry === 0) for (const p of plan.blocked) p.waiters.add(node)
    else if (plan.blocked.length > 0 || resting) this.#backOff(node, plan.blocked, retry)
    for (const p of plan.idle) node.idlePeers.set(p, node.idleKey(p, ENDGAME_PIECES))
    for (const r of plan.requests) this.#launch(node, r.index, r.peer)
  }

  get #busyRetry(): number {
    return this.#init.busyRetry ?? BUSY_BACKOFF_MS / 1000
  }

  /** As the agent's transfer on `PIECE_BUSY`: leave those peers alone a while, then ask again. */
  #backOff(node: SimNode, blocked: readonly SimNode[], retry: number): void {
    const now = this.#queue.now
    for (const p of blocked) {
      // The request went out and came back refused.
      node.busyUntil.set(p, now + retry)
      node.controlMessages += 2
    }
    if (node.retrying) return
    node.retrying = true
    // Once a period, as the agent's timer after a refusal (every resting peer is free by then).
    this.#queue.schedule(now + retry * 1.0001, () => {
      node.retrying = false
      this.#pump(node)
    })
  }

  #launch(node: SimNode, piece: number, from: SimNode | undefined): void {
    const links = from === undefined ? [this.#registryUp, node.down] : [from.up, node.down]
    const buffered =
      from === undefined ? 0 : Math.min(this.#pieceBytes, (this.#init.sendBuffer ?? 0) * from.up.capacity)
    const head = this.#pieceBytes - buffered
    const flow =
      buffered === 0
        ? this.#net.start(links, this.#pieceBytes, { to: node, from, piece })
        : head === 0
          ? this.#net.start(links, buffered, { to: node, from, piece, slotFreed: true })
          : this.#net.start(links, head, { to: node, from, piece, head: true })
    this.#flows++
    let list = node.flights.get(piece)
    if (list === undefined) {
      list = []
      node.flights.set(piece, list)
    }
    list.push(flow)
    node.sources.set(piece, list.map(sourceOf))
    node.controlMessages++
    if (from === undefined) {
      node.registryLoad++
      if (!node.claims.has(piece)) {
        node.claims.set(piece, this.#queue.now * 1000)
        node.controlMessages += node.neighbours.size
      }
    } else {
      node.peerLoad.set(from, (node.peerLoad.get(from) ?? 0) + 1)
      node.peerFlights++
      if (flow.tag.slotFreed !== true) from.uploading++
    }
  }

  /** The sender handed the rest of the piece to its buffers: its slot frees, the tail goes on. */
  #handedOver(flow: Flow<Transfer>): void {
    const { to, from, piece } = flow.tag
    if (from === undefined) return
    from.uploaded += flow.bytes
    from.uploading--
    const tail = this.#net.start([from.up, to.down], this.#pieceBytes - flow.bytes, {
      to,
      from,
      piece,
      slotFreed: true
    })
    const list = to.flights.get(piece)
    const k = list?.indexOf(flow) ?? -1
    if (list !== undefined && k >= 0) list[k] = tail
    this.#wake(from)
  }

  /** Replicas of the rarest piece `w` could ask `uploader` for. */
  #rarestWanted(w: SimNode, uploader: SimNode): number {
    let least = Number.POSITIVE_INFINITY
    if (uploader.offeredList.length < w.missing.size) {
      for (const i of uploader.offeredList)
        if (w.missing.has(i) && !w.sources.has(i)) least = Math.min(least, this.#replicas[i] ?? 0)
    } else
      for (const i of w.missing)
        if (uploader.offered[i] === 1 && !w.sources.has(i)) least = Math.min(least, this.#replicas[i] ?? 0)
    return least
  }

  #sample(force: boolean): void {
    let min = Number.POSITIVE_INFINITY
    for (const r of this.#replicas) min = Math.min(min, r)
    this.#recorder.sample(this.#queue.now, this.#completed, this.#registryEgress, min, force)
  }
}

function sourceOf(f: Flow<Transfer>): string {
  return f.tag.from?.peerId ?? REGISTRY
}

function rate(r: number | readonly number[], n: number): number {
  if (typeof r === 'number') return r
  const v = r[n]
  if (v === undefined) throw new RangeError(`no rate for node ${n}`)
  return v
}

/** A 32-bit hash of (seed, node, piece) for rendezvous hashing. */
function mix(seed: number, node: number, piece: number): number {
  let h = (seed ^ Math.imul(node + 1, 0x9e3779b1) ^ Math.imul(piece + 2, 0x85ebca77)) >>> 0
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d)
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b)
  return (h ^ (h >>> 16)) >>> 0
}
