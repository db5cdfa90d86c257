import { MiB } from '../constants.ts'
import { UnsafeLayerError } from '../errors.ts'

/**
 * Largest window a zstd frame of a layer may ask for: libzstd's own default decoding limit
 * (windowLog 27), past which `zstd -d` refuses a frame too. The decoder allocates the window
 * when it reads the frame header (the whole content, for a single-segment frame): without this
 * limit a layer of a few bytes could make the agent allocate, and fill, 2 GiB.
 */
export const MAX_ZSTD_WINDOW = 128 * MiB

const MAGIC = 0xfd2fb528
const SKIPPABLE_MASK = 0xfffffff0
const SKIPPABLE = 0x184d2a50
/** Frame header bytes after the magic and descriptor: window, dictionary id, content size. */
const DICT_ID_BYTES = [0, 1, 2, 4] as const
const CONTENT_SIZE_BYTES = [0, 2, 4, 8] as const

/**
 * Follows the frames of a zstd stream as its bytes arrive, reading only frame and block
 * headers, and throws `UnsafeLayerError` before the decoder sees a frame whose window exceeds
 * `MAX_ZSTD_WINDOW`, or a header the format forbids (reserved bits, reserved block type).
 * What lies inside blocks is the decoder's to check.
 */
export class ZstdFrameGuard {
  readonly #maxWindow: number
  /** Header bytes gathered so far (frame or block header). */
  #head: number[] = []
  /** How many header bytes are wanted before the current step can be read. */
  #want = 4
  #step: 'magic' | 'frame' | 'skippable' | 'block' = 'magic'
  /** Bytes to pass over: a block's content, a skippable frame, a checksum. */
  #skip = 0
  #checksum = false

  constructor(maxWindow = MAX_ZSTD_WINDOW) {
    this.#maxWindow = maxWindow
  }

  /** Checks the next bytes of the stream. */
  push(chunk: Uint8Array): void {
    let at = 0
    while (at < chunk.length) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, chunk.length - at)
        this.#skip -= n
        at += n
        continue
      }
      this.#head.push(chunk[at++] as number)
      if (this.#head.length < this.#want) continue
      this.#read()
    }
  }

  #read(): void {
    const h = this.#head
    switch (this.#step) {
      case 'magic': {
        const magic =
          (h[0] as number) | ((h[1] as number) << 8) | ((h[2] as number) << 16) | ((h[3] as number) << 24)
        if (magic >>> 0 === MAGIC) {
          this.#step = 'frame'
          this.#want = 5
          return
        }
        if ((magic & SKIPPABLE_MASK) >>> 0 === SKIPPABLE) {
          this.#step = 'skippable'
          this.#want = 8
          return
        }
        throw new UnsafeLayerError('corrupt zstd stream: a frame does not start with a zstd magic number')
      }
      case 'skippable':
        this.#pass(Buffer.from(h).readUInt32LE(4), 'magic')
        return
      case 'frame': {
        const fhd = h[4] as number
        if (fhd & 0x08) throw new UnsafeLayerError('corrupt zstd stream: a reserved frame header bit is set')
        const single = (fhd >> 5) & 1
        const fcsFlag = fhd >> 6
        const fcsBytes = fcsFlag === 0 ? single : (CONTENT_SIZE_BYTES[fcsFlag] as number)
        const length = 5 + (single ? 0 : 1) + (DICT_ID_BYTES[fhd & 3] as number) + fcsBytes
        if (h.length < length) {
          this.#want = length
          return
        }
        let window: number
        if (single) {
          const b = Buffer.from(h.slice(length - fcsBytes))
          let size = 0
          for (let i = b.length - 1; i >= 0; i--) size = size * 256 + (b[i] as number)
          window = fcsFlag === 1 ? size + 256 : size
        } else {
          const wd = h[5] as number
          const base = 2 ** (10 + (wd >> 3))
          window = base + (base / 8) * (wd & 7)
        }
        if (window > this.#maxWindow) {
          throw new UnsafeLayerError(
            `zstd frame needs a window of ${window} bytes, over the ${this.#maxWindow}-byte limit`
          )
        }
        this.#checksum = (fhd & 0x04) !== 0
        this.#next('block', 3)
        return
      }
      case 'block': {
        const header = (h[0] as number) | ((h[1] as number) << 8) | ((h[2] as number) << 16)
        const last = header & 1
        const type = (header >> 1) & 3
        const size = header >> 3
        if (type === 3) throw new UnsafeLayerError('corrupt zstd stream: a block of the reserved type')
        const content = type === 1 ? 1 : size
        if (last) {
          this.#pass(content + (this.#checksum ? 4 : 0), 'magic')
        } else {
          this.#pass(content, 'block')
        }
      }
    }
  }

  /** Passes over `n` bytes, then reads a block header or the next frame. */
  #pass(n: number, then: 'block' | 'magic'): void {
    this.#skip = n
    this.#next(then, then === 'block' ? 3 : 4)
  }

  #next(step: 'block' | 'magic', want: number): void {
    this.#step = step
    this.#want = want
    this.#head = []
  }
}
