/**
 * One node of the swarm model: what it holds, what it has in flight, whom it knows, and what it
 * has sent. It is the `PeerView` its neighbours' schedulers see.
 */
import type { PeerView } from '../fetch/piece-picker.ts'
import type { Flow, Link } from './flow-network.ts'

/** A piece on its way: to `to`, from a peer or (`from` undefined) the registry. */
export interface Transfer {
  to: SimNode
  from: SimNode | undefined
  piece: number
  /**
   * The head of a piece whose last bytes sit in the sender's buffers (`sendBuffer`): when it
   * ends, the sender's upload slot frees and the tail goes on.
   */
  head?: boolean
  /** The tail of such a piece: the sender's slot is already free. */
  slotFreed?: boolean
}

export class SimNode implements PeerView {
  readonly peerId: string
  /** Pieces held (verified). */
  readonly held: Uint8Array
  /** Pieces whose HAVE has reached the neighbours. */
  readonly offered: Uint8Array
  /** The same pieces, in the order offered (see `PeerView.offeredList`). */
  readonly offeredList: number[] = []
  readonly missing = new Set<number>()
  readonly flights = new Map<number, Flow<Transfer>[]>()
  /** Sources of each piece in flight, as the picker reads them. */
  readonly sources = new Map<number, string[]>()
  /** When this node claimed each registry piece it is fetching (ms). */
  readonly claims = new Map<number, number>()
  /** Requests in flight to each neighbour. */
  readonly peerLoad = new Map<SimNode, number>()
  readonly neighbours = new Set<SimNode>()
  /** How many neighbours offer each piece. */
  readonly availability: Uint16Array
  /** Neighbours that wanted a piece of this node while its upload slots were full. */
  readonly waiters = new Set<SimNode>()
  /** Peers that turned this node away, and until when it leaves them alone (s). */
  readonly busyUntil = new Map<SimNode, number>()
  /** A retry after a refusal is scheduled. */
  retrying = false
  /** Peers this node no longer asks (they sent a corrupt piece). */
  readonly banned = new Set<SimNode>()
  registryLoad = 0
  /** Bumped when this node offers a piece. */
  offerVersion = 0
  /** Bumped when one of this node's flights ends (landed, cancelled or refused). */
  flightEnds = 0
  /**
   * Peers that held nothing this node would ask for, with the state that was true in (see
   * `idleKey`): until it changes they are not asked again.
   */
  readonly idlePeers = new Map<SimNode, number>()
  /** Requests in flight to all peers (the sum of `peerLoad`). */
  peerFlights = 0
  /** Pieces this node is uploading now. */
  uploading = 0
  arrival = 0
  /** It has arrived (and provided the blob); `joined` once its own lookup is done. */
  arrived = false
  joined = false
  left = false
  /** Serves corrupt pieces and offers every piece (a malicious peer). */
  malicious = false
  lastProgress = 0
  /** A patience check is scheduled. */
  watching = false
  completedAt = Number.POSITIVE_INFINITY
  uploaded = 0
  dhtMessages = 0
  controlMessages = 0

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
    this.availability = new Uint16Array(count)
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

  /**
   * What a peer's usefulness to this node depends on: the peer's offer, this node's flights
   * ending (a piece no longer in flight may be asked for again) and the endgame (in-flight
   * pieces may be asked for twice). Missing pieces only shrink otherwise.
   */
  idleKey(peer: SimNode, endgamePieces: number): number {
    return (peer.offerVersion * 1e7 + this.flightEnds) * 2 + (this.missing.size <= endgamePieces ? 1 : 0)
  }

  get done(): boolean {
    return this.missing.size === 0
  }

  /** Starts offering piece `i` to the neighbours (its HAVE reached them). */
  offer(i: number): void {
    if (this.offered[i] === 1) return
    this.offered[i] = 1
    this.offeredList.push(i)
    this.offerVersion++
    for (const n of this.neighbours) n.availability[i] = (n.availability[i] ?? 0) + 1
  }

  connect(other: SimNode): void {
    if (other === this || this.neighbours.has(other)) return
    this.neighbours.add(other)
    other.neighbours.add(this)
    for (let i = 0; i < this.offered.length; i++) {
      if (other.offered[i] === 1) this.availability[i] = (this.availability[i] ?? 0) + 1
      if (this.offered[i] === 1) other.availability[i] = (other.availability[i] ?? 0) + 1
    }
  }

  disconnect(other: SimNode): void {
    if (!this.neighbours.delete(other)) return
    other.neighbours.delete(this)
    for (let i = 0; i < this.offered.length; i++) {
      if (other.offered[i] === 1) this.availability[i] = (this.availability[i] ?? 1) - 1
      if (this.offered[i] === 1) other.availability[i] = (other.availability[i] ?? 1) - 1
    }
    this.waiters.delete(other)
    other.waiters.delete(this)
  }
}
