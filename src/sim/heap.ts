/** A binary min-heap ordered by `less`: the event queue's and the flow network's. */
export class MinHeap<T> {
  readonly #h: T[] = []

  constructor(readonly less: (a: T, b: T) => boolean) {}

  get size(): number {
    return this.#h.length
  }

  peek(): T | undefined {
    return this.#h[0]
  }

  push(e: T): void {
    const h = this.#h
    h.push(e)
    let i = h.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!this.less(e, h[p] as T)) break
      h[i] = h[p] as T
      i = p
    }
    h[i] = e
  }

  pop(): T | undefined {
    const h = this.#h
    const top = h[0]
    if (top === undefined) return undefined
    const last = h.pop() as T
    if (h.length > 0) {
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        let best = last
        if (l < h.length && this.less(h[l] as T, best)) {
          m = l
          best = h[l] as T
        }
        if (r < h.length && this.less(h[r] as T, best)) m = r
        if (m === i) break
        h[i] = h[m] as T
        i = m
      }
      h[i] = last
    }
    return top
  }
}
