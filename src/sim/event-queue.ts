/**
 * The virtual clock of the model simulator: a min-heap of events by time. Events at the same
 * time run in the order they were scheduled (a sequence number breaks ties), so a run depends
 * only on its seed.
 */
import { MinHeap } from './heap.ts'

interface Entry {
  at: number
  seq: number
  run: () => void
}

/** A discrete-event queue; `now` moves only when an event is taken. */
export class EventQueue {
  readonly #heap = new MinHeap<Entry>((a, b) => a.at < b.at || (a.at === b.at && a.seq < b.seq))
  #seq = 0
  /** The virtual time (seconds) of the last event taken. */
  now = 0

  /** Schedules `run` at virtual time `at` (never before now). */
  schedule(at: number, run: () => void): void {
    this.#heap.push({ at: Math.max(at, this.now), seq: this.#seq++, run })
  }

  /** Time of the next event, or Infinity when none is queued. */
  peekTime(): number {
    return this.#heap.peek()?.at ?? Number.POSITIVE_INFINITY
  }

  get size(): number {
    return this.#heap.size
  }

  /** Takes the next event, moves the clock to it and returns its action. */
  pop(): (() => void) | undefined {
    const top = this.#heap.pop()
    if (top === undefined) return undefined
    this.now = top.at
    return top.run
  }
}
