/**
 * Piece-sized buffers reused across a pull. Fetching a 100 MB image in 4 MiB pieces would
 * otherwise allocate (and leave to the garbage collector) a new buffer per piece; with a pool
 * the agent's memory stays at about `max` buffers however large the image.
 */
export class BufferPool {
  readonly size: number
  readonly #max: number
  readonly #free: Uint8Array[] = []

  constructor(size: number, max: number) {
    this.size = size
    this.#max = max
  }

  /** A buffer of at least `length` bytes: pooled when it fits, else a fresh one. */
  acquire(length: number): Uint8Array {
    if (length > this.size) return new Uint8Array(length)
    return this.#free.pop() ?? new Uint8Array(this.size)
  }

  /** Returns a buffer from `acquire`; nothing may use it afterwards. */
  release(buf: Uint8Array): void {
    if (buf.byteLength === this.size && this.#free.length < this.#max) this.#free.push(buf)
  }

  /** Buffers waiting for reuse. */
  get idle(): number {
    return this.#free.length
  }
}
