/**
 * libFuzzer's mutations on a byte buffer, driven by a seeded generator so a run can be repeated:
 * erase, insert and change bytes and bits, shuffle, change an ASCII or a binary integer, copy a
 * part, insert a dictionary word or an interesting value, and cross over with another input.
 */

const INTERESTING: readonly number[] = [
  0, 1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff
]

export class Mutator {
  readonly #random: () => number
  readonly #dictionary: readonly Buffer[]
  readonly #maxLength: number

  constructor(random: () => number, dictionary: readonly Buffer[], maxLength: number) {
    this.#random = random
    this.#dictionary = dictionary
    this.#maxLength = maxLength
  }

  /** An integer in [0, n). */
  below(n: number): number {
    return Math.floor(this.#random() * n)
  }

  /** `input` after 1 to 5 stacked mutations; `other` is a corpus input to cross over with. */
  mutate(input: Buffer, other: Buffer): Buffer {
    let out: Buffer = Buffer.from(input)
    const rounds = 1 + this.below(5)
    for (let i = 0; i < rounds; i++) out = this.#once(out, other)
    return out.length > this.#maxLength ? out.subarray(0, this.#maxLength) : out
  }

  #once(b: Buffer, other: Buffer): Buffer {
    const at = (n = b.length) => this.below(Math.max(1, n))
    switch (this.below(12)) {
      case 0: {
        // Erase a run of bytes.
        if (b.length < 2) return b
        const start = at()
        const n = 1 + this.below(Math.min(16, b.length - start))
        return Buffer.concat([b.subarray(0, start), b.subarray(start + n)])
      }
      case 1: {
        // Insert one byte, or a run of one repeated byte.
        const n = this.below(4) === 0 ? 1 + this.below(64) : 1
        return splice(b, at(b.length + 1), Buffer.alloc(n, this.below(256)))
      }
      case 2:
        if (b.length > 0) b[at()] = this.below(256)
        return b
      case 3:
        if (b.length > 0) {
          const i = at()
          b[i] = (b[i] as number) ^ (1 << this.below(8))
        }
        return b
      case 4: {
        // Shuffle a few bytes.
        if (b.length < 2) return b
        const start = at()
        const n = Math.min(8, b.length - start)
        for (let i = n - 1; i > 0; i--) {
          const j = this.below(i + 1)
          const t = b[start + i] as number
          b[start + i] = b[start + j] as number
          b[start + j] = t
        }
        return b
      }
      case 5:
        return this.#asciiInteger(b)
      case 6:
        return this.#binaryInteger(b)
      case 7: {
        // Copy a part of the input over another part, or insert it.
        if (b.length < 2) return b
        const from = at()
        const n = 1 + this.below(Math.min(64, b.length - from))
        const part = Buffer.from(b.subarray(from, from + n))
        if (this.below(2) === 0) return splice(b, at(b.length + 1), part)
        part.copy(b, at())
        return b
      }
      case 8:
      case 9: {
        // A dictionary word, inserted or written over.
        const word = this.#dictionary[this.below(this.#dictionary.length)]
        if (word === undefined) return b
        if (this.below(2) === 0 || b.length < word.length) return splice(b, at(b.length + 1), word)
        word.copy(b, this.below(b.length - word.length + 1))
        return b
      }
      case 10: {
        // Cross over: the head of one input and the tail of the other.
        const cut = at(b.length + 1)
        return Buffer.concat([b.subarray(0, cut), other.subarray(this.below(other.length + 1))])
      }
      default: {
        // An interesting value, big-endian as most of these formats are, in 1, 2, 4 or 8 bytes.
        const width = [1, 2, 4, 8][this.below(4)] as number
        const v = BigInt(INTERESTING[this.below(INTERESTING.length)] as number)
        const bytes = Buffer.alloc(8)
        bytes.writeBigUInt64BE(this.below(4) === 0 ? 0xffffffffffffffffn - v : v)
        const field = bytes.subarray(8 - width)
        if (b.length < width) return Buffer.concat([b, field])
        field.copy(b, this.below(b.length - width + 1))
        return b
      }
    }
  }

  /** Finds a run of ASCII digits and replaces its number with a nearby or extreme one. */
  #asciiInteger(b: Buffer): Buffer {
    const text = b.toString('latin1')
    const runs = [...text.matchAll(/\d+/g)]
    const run = runs[this.below(runs.length)]
    if (run === undefined || run.index === undefined) return b
    const n = BigInt(run[0])
    const choices = [n + 1n, n - 1n, n * 2n, n / 2n, 0n, 2n ** 31n, 2n ** 53n, 2n ** 64n, -n]
    const next = Buffer.from(String(choices[this.below(choices.length)]), 'latin1')
    return Buffer.concat([b.subarray(0, run.index), next, b.subarray(run.index + run[0].length)])
  }

  /** Adds a small delta to a 1-, 2-, 4- or 8-byte integer, big- or little-endian. */
  #binaryInteger(b: Buffer): Buffer {
    const width = [1, 2, 4, 8][this.below(4)] as number
    if (b.length < width) return b
    const at = this.below(b.length - width + 1)
    const bits = BigInt(width * 8)
    const mask = (1n << bits) - 1n
    const le = this.below(2) === 0
    let v = 0n
    for (let i = 0; i < width; i++) v |= BigInt(b[at + i] as number) << BigInt(8 * (le ? i : width - 1 - i))
    v = (v + BigInt(this.below(71) - 35)) & mask
    for (let i = 0; i < width; i++) b[at + i] = Number((v >> BigInt(8 * (le ? i : width - 1 - i))) & 0xffn)
    return b
  }
}

function splice(b: Buffer, at: number, part: Uint8Array): Buffer {
  return Buffer.concat([b.subarray(0, at), part, b.subarray(at)])
}
