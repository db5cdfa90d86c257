import { InternalError, ProtocolViolationError, RangeNotSatisfiableError } from '../errors.ts'

// Set bits in each byte value, for count() and fromBytes().
const POPCOUNT = new Uint8Array(256)
for (let i = 1; i < 256; i++) POPCOUNT[i] = (i & 1) + (POPCOUNT[i >> 1] as number)

/**
 * Which of a blob's `size` pieces are present. Bit `i` is bit `7 - (i % 8)` of byte `i >> 3`
 * (most significant first, as in BitTorrent); spare bits of the last byte are always zero, so
 * equal sets have equal bytes.
 */
export class Bitfield {
  /** Number of pieces the field covers. */
  readonly size: number
  readonly #bits: Uint8Array
  #count = 0

  /** An empty field of `size` pieces. */
  constructor(size: number) {
    if (!Number.isSafeInteger(size) || size < 0) throw new InternalError(`bitfield size ${size} is invalid`)
    this.size = size
    this.#bits = new Uint8Array(Math.ceil(size / 8))
  }

  /** Bytes a field of `size` pieces takes on the wire. */
  static byteLength(size: number): number {
    return Math.ceil(size / 8)
  }

  /**
   * Reads a field of `size` pieces sent by a peer (copied). A wrong length or a spare bit set
   * throws `ProtocolViolationError`.
   */
  static fromBytes(bytes: Uint8Array, size: number): Bitfield {
    const bf = new Bitfield(size)
    if (bytes.length !== bf.#bits.length) {
      throw new ProtocolViolationError(
        `bitfield of ${size} pieces must be ${bf.#bits.length} bytes, got ${bytes.length}`
      )
    }
    const spare = bf.#bits.length * 8 - size
    if (spare > 0 && ((bytes[bytes.length - 1] as number) & ((1 << spare) - 1)) !== 0) {
      throw new ProtocolViolationError(`bitfield of ${size} pieces has spare bits set`)
    }
    bf.#bits.set(bytes)
    bf.#count = popcount(bf.#bits)
    return bf
  }

  /** A field with every piece set. */
  static all(size: number): Bitfield {
    const bf = new Bitfield(size)
    bf.#bits.fill(0xff)
    const spare = bf.#bits.length * 8 - size
    if (spare > 0) bf.#bits[bf.#bits.length - 1] = (0xff << spare) & 0xff
    bf.#count = size
    return bf
  }

  /** Marks piece `index` present; returns true when it was not already. */
  set(index: number): boolean {
    this.#check(index)
    const mask = 0x80 >> (index & 7)
    const byte = this.#bits[index >> 3] as number
    if (byte & mask) return false
    this.#bits[index >> 3] = byte | mask
    this.#count++
    return true
  }

  /** Marks piece `index` absent; returns true when it was present. */
  unset(index: number): boolean {
    this.#check(index)
    const mask = 0x80 >> (index & 7)
    const byte = this.#bits[index >> 3] as number
    if (!(byte & mask)) return false
    this.#bits[index >> 3] = byte & ~mask
    this.#count--
    return true
  }

  /** True when piece `index` is present (false for any index outside the field). */
  has(index: number): boolean {
    if (!Number.isInteger(index) || index < 0 || index >= this.size) return false
    return ((this.#bits[index >> 3] as number) & (0x80 >> (index & 7))) !== 0
  }

  /** Number of pieces present. */
  count(): number {
    return this.#count
  }

  /** True when every piece is present (an empty field is full). */
  full(): boolean {
    return this.#count === this.size
  }

  /** True when no piece is present. */
  empty(): boolean {
    return this.#count === 0
  }

  /** Indexes of the pieces present, ascending. */
  present(): number[] {
    return this.#indexes(true)
  }

  /** Indexes of the pieces absent, ascending. */
  missing(): number[] {
    return this.#indexes(false)
  }

  /** Pieces present in both fields. */
  and(other: Bitfield): Bitfield {
    return this.#combine(other, (a, b) => a & b)
  }

  /** Pieces present in this field but not in `other`: `theirs.andNot(mine)` is what they can give me. */
  andNot(other: Bitfield): Bitfield {
    return this.#combine(other, (a, b) => a & ~b)
  }

  /** Pieces present in either field. */
  or(other: Bitfield): Bitfield {
    return this.#combine(other, (a, b) => a | b)
  }

  /** An independent copy. */
  clone(): Bitfield {
    return this.#combine(this, (a) => a)
  }

  /** True when both fields cover the same pieces and hold the same ones. */
  equals(other: Bitfield): boolean {
    if (other.size !== this.size || other.#count !== this.#count) return false
    return this.#bits.every((b, i) => b === other.#bits[i])
  }

  /** The wire form (a copy): `byteLength(size)` bytes, spare bits zero. */
  toBytes(): Uint8Array {
    return this.#bits.slice()
  }

  #check(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.size) {
      throw new RangeNotSatisfiableError(`piece ${index} is outside a bitfield of ${this.size}`)
    }
  }

  #indexes(want: boolean): number[] {
    const out: number[] = []
    const bits = this.#bits
    for (let byte = 0; byte < bits.length; byte++) {
      const v = bits[byte] as number
      // Skip whole bytes with nothing of interest.
      if (want ? v === 0 : v === 0xff) continue
      const end = Math.min(8, this.size - byte * 8)
      for (let bit = 0; bit < end; bit++) {
        if (((v & (0x80 >> bit)) !== 0) === want) out.push(byte * 8 + bit)
      }
    }
    return out
  }

  #combine(other: Bitfield, op: (a: number, b: number) => number): Bitfield {
    if (other.size !== this.size) {
      throw new InternalError(`cannot combine bitfields of ${this.size} and ${other.size} pieces`)
    }
    const out = new Bitfield(this.size)
    for (let i = 0; i < out.#bits.length; i++) {
      out.#bits[i] = op(this.#bits[i] as number, other.#bits[i] as number) & 0xff
    }
    out.#count = popcount(out.#bits)
    return out
  }
}

function popcount(bits: Uint8Array): number {
  let n = 0
  for (const b of bits) n += POPCOUNT[b] as number
  return n
}
