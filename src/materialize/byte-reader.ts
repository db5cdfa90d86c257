/**
 * Reads a byte stream in pieces of the caller's choosing (a header, then a table, then data),
 * holding only what one read asks for beyond the chunk the stream last gave.
 */
export class ByteReader {
  readonly #it: AsyncIterator<Uint8Array>
  #pending: Uint8Array = new Uint8Array(0)
  #done = false

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]()
  }

  /** Exactly `n` bytes, or undefined when the stream ends first. */
  async readExactly(n: number): Promise<Uint8Array | undefined> {
    const parts: Uint8Array[] = []
    let have = 0
    while (have < n) {
      const chunk = await this.readSome(n - have)
      if (!chunk) return undefined
      parts.push(chunk)
      have += chunk.byteLength
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts, n)
  }

  /** Between 1 and `max` bytes, or undefined at the end of the stream. */
  async readSome(max: number): Promise<Uint8Array | undefined> {
    while (this.#pending.byteLength === 0) {
      if (!(await this.#fill())) return undefined
    }
    const take = Math.min(max, this.#pending.byteLength)
    const out = this.#pending.subarray(0, take)
    this.#pending = this.#pending.subarray(take)
    return out
  }

  /** True when no byte is left. */
  async atEnd(): Promise<boolean> {
    while (this.#pending.byteLength === 0) {
      if (!(await this.#fill())) return true
    }
    return false
  }

  async #fill(): Promise<boolean> {
    if (this.#done) return false
    const next = await this.#it.next()
    if (next.done) {
      this.#done = true
      return false
    }
    this.#pending = next.value
    return true
  }
}
