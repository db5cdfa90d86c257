/**
 * A flow-level network model: each transfer is a flow across links (a sender's uplink and a
 * receiver's downlink), and the flows get rates by max-min fair sharing of every link they use,
 * recomputed by progressive filling whenever a flow starts or ends. Between changes every rate
 * is constant, so completion times are exact (up to float rounding).
 */
import { EventQueue } from './event-queue.ts'

/** A link with a capacity in bytes per second. */
export interface Link {
  readonly name: string
  readonly capacity: number
}

/** A transfer in progress. */
export interface Flow<T> {
  readonly links: readonly Link[]
  /** Bytes still to move. */
  remaining: number
  /** Current rate, bytes per second. */
  rate: number
  readonly tag: T
}

/** Remaining bytes at or below this count as done (float rounding). */
const EPSILON_BYTES = 1e-6

/** Flows sharing links max-min fairly, advanced in virtual time. */
export class FlowNetwork<T> {
  #flows = new Set<Flow<T>>()
  #time = 0

  /** The virtual time (seconds) the network has been advanced to. */
  get time(): number {
    return this.#time
  }

  get flowCount(): number {
    return this.#flows.size
  }

  /** Starts a flow of `bytes` over `links` at the current time and reshares every link. */
  start(links: readonly Link[], bytes: number, tag: T): Flow<T> {
    const flow: Flow<T> = { links, remaining: bytes, rate: 0, tag }
    this.#flows.add(flow)
    this.#reshare()
    return flow
  }

  /** Stops `flow` where it is (its `remaining` keeps the bytes not sent) and reshares. */
  cancel(flow: Flow<T>): void {
    if (this.#flows.delete(flow)) this.#reshare()
  }

  /** When the next flow ends at today's rates, or Infinity when none moves. */
  nextCompletion(): number {
    let best = Number.POSITIVE_INFINITY
    for (const f of this.#flows) {
      if (f.remaining <= EPSILON_BYTES) return this.#time
      if (f.rate > 0) best = Math.min(best, this.#time + f.remaining / f.rate)
    }
    return best
  }

  /**
   * Moves every flow on to virtual time `to` (not past `nextCompletion()`), removes the flows
   * that finished, reshares, and returns them.
   */
  advance(to: number): Flow<T>[] {
    const dt = to - this.#time
    if (dt < 0) throw new RangeError(`cannot go back in time: ${to} < ${this.#time}`)
    this.#time = to
    const done: Flow<T>[] = []
    for (const f of this.#flows) {
      f.remaining -= f.rate * dt
      // Relative slack: a flow meant to end now may be left a rounding error short.
      if (f.remaining <= Math.max(EPSILON_BYTES, f.rate * to * 1e-12)) done.push(f)
    }
    for (const f of done) {
      f.remaining = 0
      this.#flows.delete(f)
    }
    if (done.length > 0) this.#reshare()
    return done
  }

  /**
   * Progressive filling: raise all unfrozen flows together; the link that fills first fixes the
   * rate of every flow across it; repeat with what is left on the other links.
   */
  #reshare(): void {
    const left = new Map<Link, number>()
    const through = new Map<Link, Set<Flow<T>>>()
    for (const f of this.#flows) {
      for (const l of f.links) {
        let set = through.get(l)
        if (set === undefined) {
          set = new Set()
          through.set(l, set)
          left.set(l, l.capacity)
        }
        set.add(f)
      }
    }
    // A link's fair share (left / flows still unfrozen) only grows as flows freeze at the
    // smallest share, so a heap with stale entries skipped finds each bottleneck in log time.
    const heap = new EventQueue()
    let bottleneck: Link | undefined
    const push = (l: Link): void => {
      const n = (through.get(l) as Set<Flow<T>>).size
      if (n > 0)
        heap.schedule((left.get(l) as number) / n, () => {
          bottleneck = l
        })
    }
    for (const l of through.keys()) push(l)
    while (heap.size > 0) {
      const share = heap.peekTime()
      heap.pop()?.()
      const l = bottleneck as Link
      const set = through.get(l) as Set<Flow<T>>
      if (set.size === 0) continue
      // Stale: this link's share grew since the entry was pushed; a newer entry holds it.
      const actual = (left.get(l) as number) / set.size
      if (actual > share * (1 + 1e-12)) continue
      const touched = new Set<Link>()
      for (const f of [...set]) {
        f.rate = Math.max(0, actual)
        for (const k of f.links) {
          left.set(k, (left.get(k) as number) - actual)
          through.get(k)?.delete(f)
          touched.add(k)
        }
      }
      for (const k of touched) if (k !== l) push(k)
    }
  }
}
