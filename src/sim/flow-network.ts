/**
 * A flow-level network model: each transfer is a flow across links (a sender's uplink and a
 * receiver's downlink), and the flows get rates by max-min fair sharing of every link they use
 * (progressive filling). Between changes every rate is constant, so completion times are exact
 * up to float rounding; a heap of completion times finds the next one in log time.
 *
 * When a flow starts or ends, only the flows near it are refilled: those sharing a link with
 * it, widened while a refilled link has capacity left that a flow outside could take, or a
 * flow outside holds more of a full link than one inside got, up to `localLimit` flows; the
 * rest keep their rates. Within that limit the result is the global
 * max-min allocation; beyond it, a close one that is corrected as those flows' own links
 * change. `localLimit: Infinity` always refills every flow (exact, and slow for big swarms).
 */
import { MinHeap } from './heap.ts'

/** A link with a capacity in bytes per second. */
export interface Link {
  readonly name: string
  readonly capacity: number
}

/** Remaining bytes at or below this count as done (float rounding). */
const EPSILON_BYTES = 1e-6
/** Capacity below this (bytes per second) counts as used up. */
const EPSILON_RATE = 1e-9

/** A transfer in progress. */
export class Flow<T> {
  #left: number
  #at: number
  #rate = 0
  /** Bumped on every rate change: heap entries with an older stamp are stale. */
  stamp = 0
  live = true

  constructor(
    readonly links: readonly Link[],
    readonly bytes: number,
    readonly tag: T,
    readonly clock: () => number
  ) {
    this.#left = bytes
    this.#at = clock()
  }

  /** Current rate, bytes per second. */
  get rate(): number {
    return this.#rate
  }

  /** Bytes still to move, at the network's current time. */
  get remaining(): number {
    if (!this.live) return this.#left
    return Math.max(0, this.#left - this.#rate * (this.clock() - this.#at))
  }

  /** When the flow ends at its current rate. */
  get endsAt(): number {
    return this.#rate > 0 ? this.#at + this.#left / this.#rate : Number.POSITIVE_INFINITY
  }

  /** Changes the rate from now on; returns false when it did not change. */
  setRate(rate: number): boolean {
    if (rate === this.#rate) return false
    this.#left = this.remaining
    this.#at = this.clock()
    this.#rate = rate
    this.stamp++
    return true
  }

  /** Freezes the flow where it is (ended or cancelled). */
  stop(done: boolean): void {
    this.#left = done ? 0 : this.remaining
    this.#at = this.clock()
    this.#rate = 0
    this.live = false
  }
}

interface Due<T> {
  at: number
  stamp: number
  flow: Flow<T>
}

export interface FlowNetworkOptions {
  /** Most flows one change refills (see the module comment). Default 512. */
  localLimit?: number
}

/** Flows sharing links max-min fairly, advanced in virtual time. */
export class FlowNetwork<T> {
  readonly #through = new Map<Link, Set<Flow<T>>>()
  readonly #due = new MinHeap<Due<T>>((a, b) => a.at < b.at)
  readonly #localLimit: number
  #count = 0
  #time = 0
  /** Refills done and flows they touched: how much work the sharing costs. */
  readonly work = { refills: 0, flows: 0 }

  constructor(options: FlowNetworkOptions = {}) {
    this.#localLimit = options.localLimit ?? 512
  }

  /** The virtual time (seconds) the network has been advanced to. */
  get time(): number {
    return this.#time
  }

  get flowCount(): number {
    return this.#count
  }

  /** The flows across `link` now. */
  flowsOf(link: Link): Flow<T>[] {
    return [...(this.#through.get(link) ?? [])]
  }

  /** Starts a flow of `bytes` over `links` at the current time and reshares around it. */
  start(links: readonly Link[], bytes: number, tag: T): Flow<T> {
    const flow = new Flow(links, bytes, tag, () => this.#time)
    for (const l of links) this.#on(l).add(flow)
    this.#count++
    this.#refill(new Set([flow]))
    return flow
  }

  /** Stops `flow` where it is (its `remaining` keeps the bytes not sent) and reshares. */
  cancel(flow: Flow<T>): void {
    if (!flow.live) return
    flow.stop(false)
    this.#refill(this.#remove(flow))
  }

  /** When the next flow ends at today's rates, or Infinity when none moves. */
  nextCompletion(): number {
    for (;;) {
      const top = this.#due.peek()
      if (top === undefined) return Number.POSITIVE_INFINITY
      if (top.flow.live && top.stamp === top.flow.stamp) return Math.max(top.at, this.#time)
      this.#due.pop()
    }
  }

  /**
   * Moves the network on to virtual time `to` (not past `nextCompletion()`), removes the flows
   * that finished, reshares around them, and returns them.
   */
  advance(to: number): Flow<T>[] {
    if (to < this.#time) throw new RangeError(`cannot go back in time: ${to} < ${this.#time}`)
    this.#time = to
    const done: Flow<T>[] = []
    const near = new Set<Flow<T>>()
    for (;;) {
      const top = this.#due.peek()
      if (top === undefined) break
      const { flow } = top
      if (!flow.live || top.stamp !== flow.stamp) {
        this.#due.pop()
        continue
      }
      // Relative slack: a flow meant to end now may be left a rounding error short.
      if (flow.remaining > Math.max(EPSILON_BYTES, flow.rate * to * 1e-12)) break
      this.#due.pop()
      flow.stop(true)
      done.push(flow)
      for (const f of this.#remove(flow)) near.add(f)
    }
    if (near.size > 0) this.#refill(near)
    return done
  }

  #on(l: Link): Set<Flow<T>> {
    let set = this.#through.get(l)
    if (set === undefined) {
      set = new Set()
      this.#through.set(l, set)
    }
    return set
  }

  /** Takes `flow` off its links; returns the live flows that shared one with it. */
  #remove(flow: Flow<T>): Set<Flow<T>> {
    this.#count--
    const near = new Set<Flow<T>>()
    for (const l of flow.links) {
      const set = this.#through.get(l)
      if (set === undefined) continue
      set.delete(flow)
      if (set.size === 0) this.#through.delete(l)
      else for (const f of set) near.add(f)
    }
    return near
  }

  /** Refills `seed` and every flow sharing a link with it, widening as the module comment says. */
  #refill(seed: Set<Flow<T>>): void {
    this.work.refills++
    const flows = new Set<Flow<T>>()
    const exact = this.#localLimit === Number.POSITIVE_INFINITY
    if (exact) {
      for (const set of this.#through.values()) for (const f of set) flows.add(f)
    } else {
      for (const f of seed) {
        flows.add(f)
        for (const l of f.links) for (const g of this.#through.get(l) ?? []) flows.add(g)
      }
    }
    for (;;) {
      const left = this.#fill(flows)
      if (exact || flows.size >= this.#localLimit) break
      // A flow outside the set may be due another rate: it can go faster on a link with
      // capacity left, or it holds more of a full link than a flow of the set got there.
      let grew = false
      for (const [l, spare] of left) {
        const on = this.#through.get(l) ?? []
        let least = Number.POSITIVE_INFINITY
        if (spare <= EPSILON_RATE * l.capacity)
          for (const g of on) if (flows.has(g)) least = Math.min(least, g.rate)
        for (const g of on) {
          if (flows.has(g) || flows.size >= this.#localLimit) continue
          if (spare > EPSILON_RATE * l.capacity || g.rate > least * (1 + 1e-9)) {
            flows.add(g)
            grew = true
          }
        }
      }
      if (!grew) break
    }
    this.work.flows += flows.size
  }

  /**
   * Progressive filling of `flows` on what their links have left after the flows outside the
   * set: raise all unfrozen flows together; the link that fills first fixes the rate of every
   * flow across it; repeat. Returns each link's capacity left over.
   */
  #fill(flows: Set<Flow<T>>): Map<Link, number> {
    const left = new Map<Link, number>()
    const open = new Map<Link, Set<Flow<T>>>()
    for (const f of flows) {
      for (const l of f.links) {
        let set = open.get(l)
        if (set === undefined) {
          set = new Set()
          open.set(l, set)
          let outside = 0
          for (const g of this.#through.get(l) ?? []) if (!flows.has(g)) outside += g.rate
          left.set(l, Math.max(0, l.capacity - outside))
        }
        set.add(f)
      }
    }
    // A link's fair share (left / open flows) only grows as flows freeze at the smallest share,
    // so a heap with stale entries skipped finds each bottleneck in log time.
    const heap = new MinHeap<{ share: number; link: Link }>((a, b) => a.share < b.share)
    const push = (l: Link): void => {
      const n = (open.get(l) as Set<Flow<T>>).size
      if (n > 0) heap.push({ share: (left.get(l) as number) / n, link: l })
    }
    for (const l of open.keys()) push(l)
    for (;;) {
      const top = heap.pop()
      if (top === undefined) break
      const set = open.get(top.link) as Set<Flow<T>>
      if (set.size === 0) continue
      const actual = (left.get(top.link) as number) / set.size
      // Stale: this link's share grew since the entry was pushed; a newer entry holds it.
      if (actual > top.share * (1 + 1e-12)) continue
      const touched = new Set<Link>()
      for (const f of [...set]) {
        if (f.setRate(Math.max(0, actual)) && f.rate > 0)
          this.#due.push({ at: f.endsAt, stamp: f.stamp, flow: f })
        for (const k of f.links) {
          left.set(k, (left.get(k) as number) - actual)
          open.get(k)?.delete(f)
          touched.add(k)
        }
      }
      for (const k of touched) if (k !== top.link) push(k)
    }
    return left
  }
}
