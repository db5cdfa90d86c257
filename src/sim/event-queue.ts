/**
 * The virtual clock of the model simulator: a binary min-heap of events by time. Events at the
 * same time run in the order they were scheduled (a sequence number breaks ties), so a run
 * depends only on its seed.
 */

interface Entry {
  at: number
  seq: number
  run: () => void
}

/** A discrete-event queue; `now` moves only when an event is taken. */
export class EventQueue {
  #heap: Entry[] = []
  #seq = 0
  /** The virtual time (seconds) of the last event taken. */
  now = 0

  /** Schedules `run` at virtual time `at` (never before now). */
  schedule(at: number, run: () => void): void {
    const e: Entry = { at: Math.max(at, this.now), seq: this.#seq++, run }
    const h = this.#heap
    h.push(e)
    let i = h.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!less(e, h[p] as Entry)) break
      h[i] = h[p] as Entry
      i = p
    }
    h[i] = e
  }

  /** Time of the next event, or Infinity when none is queued. */
  peekTime(): number {
    return this.#heap[0]?.at ?? Number.POSITIVE_INFINITY
  }

  get size(): number {
    return this.#heap.length
  }

  /** Takes the next event, moves the clock to it and returns its action. */
  pop(): (() => void) | undefined {
    const h = this.#heap
    const top = h[0]
    if (top === undefined) return undefined
    const last = h.pop() as Entry
    if (h.length > 0) {
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        let best = last
        if (l < h.length && less(h[l] as Entry, best)) {
          m = l
          best = h[l] as Entry
        }
        if (r < h.length && less(h[r] as Entry, best)) m = r
        if (m === i) break
        h[i] = h[m] as Entry
        i = m
      }
      h[i] = last
    }
    this.now = top.at
    return top.run
  }
}

function less(a: Entry, b: Entry): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq)
}
