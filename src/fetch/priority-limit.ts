/**
 * A concurrency limit whose waiters are served lowest priority number first (FIFO among
 * equals). The fetcher gives each blob transfer a number in the order transfers start, so the
 * registry streams go to the oldest transfer first: blobs complete one after another and each
 * can be served to the runtime while the next is still arriving, instead of all of them
 * finishing together at the end.
 */
export class PriorityLimit {
  readonly #max: number
  #active = 0
  #seq = 0
  readonly #queue: { priority: number; seq: number; start: () => void }[] = []

  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1)
      throw new RangeError(`limit must be a positive integer, got ${max}`)
    this.#max = max
  }

  /** Requests running now. */
  get active(): number {
    return this.#active
  }

  /** Requests waiting for a slot. */
  get pending(): number {
    return this.#queue.length
  }

  /** Runs `fn` once a slot is free, ahead of every waiter with a higher priority number. */
  async run<T>(priority: number, fn: () => Promise<T>): Promise<T> {
    if (this.#active >= this.#max) {
      await new Promise<void>((start) => {
        const entry = { priority, seq: this.#seq++, start }
        // Queues are short (a few dozen pieces): a sorted insert beats a heap here.
        let i = this.#queue.length
        while (i > 0) {
          const prev = this.#queue[i - 1] as { priority: number; seq: number }
          if (prev.priority < priority || (prev.priority === priority && prev.seq < entry.seq)) break
          i--
        }
        this.#queue.splice(i, 0, entry)
      })
    } else {
      this.#active++
    }
    try {
      return await fn()
    } finally {
      const next = this.#queue.shift()
      // The slot passes straight to the next waiter; only when none waits does it free up.
      if (next) next.start()
      else this.#active--
    }
  }
}
