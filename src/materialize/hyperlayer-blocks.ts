import { type FileHandle, open } from 'node:fs/promises'
import { InvalidHyperlayerError } from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import {
  type HyperlayerExtent,
  MAX_EXTENTS,
  type OpenHyperlayer,
  type ReadData
} from './hyperlayer-format.ts'

/** A run of blocks to look at. */
export interface BlockRange {
  block: number
  count: number
}

/** Bytes read from a device at once. */
const IO_SIZE = 1024 * 1024

export interface CompareInit {
  /** The parent's device (or file); undefined: an empty volume, all zeros. */
  parent?: string
  child: string
  blockSize: number
  volumeSize: number
  /**
   * The only blocks that may differ (from `thin_delta`); undefined: every block of the volume
   * (the fallback, which reads both volumes whole).
   */
  candidates?: readonly BlockRange[]
}

/**
 * The extents of blocks whose bytes differ between parent and child: a block the child has all
 * zeros is a `zero` extent (nothing shipped), any other changed block a `data` extent. Reads
 * only the candidate blocks, `IO_SIZE` at a time, so both the `thin_delta` path and the
 * full-read fallback give exactly the same extents: `thin_delta` says which blocks were
 * remapped, this says which of them really changed.
 */
export async function compareBlocks(
  init: CompareInit,
  options: AbortOptions = {}
): Promise<HyperlayerExtent[]> {
  const { blockSize, volumeSize } = init
  const blocks = Math.ceil(volumeSize / blockSize)
  const ranges = init.candidates ? normalize(init.candidates, blocks) : [{ block: 0, count: blocks }]
  const batch = Math.max(1, Math.floor(IO_SIZE / blockSize))
  const child = await open(init.child, 'r')
  const parent = init.parent === undefined ? undefined : await open(init.parent, 'r')
  const zero = Buffer.alloc(blockSize)
  const out = new ExtentBuilder()
  try {
    const a = Buffer.alloc(batch * blockSize)
    const b = Buffer.alloc(batch * blockSize)
    for (const range of ranges) {
      for (let block = range.block; block < range.block + range.count; block += batch) {
        options.signal?.throwIfAborted()
        const n = Math.min(batch, range.block + range.count - block)
        const offset = block * blockSize
        const length = Math.min(n * blockSize, volumeSize - offset)
        await readFully(child, b, length, offset)
        if (parent) await readFully(parent, a, length, offset)
        else a.fill(0, 0, length)
        for (let i = 0; i < n; i++) {
          const from = i * blockSize
          const to = Math.min(from + blockSize, length)
          const c = b.subarray(from, to)
          if (c.equals(a.subarray(from, to))) continue
          out.add(block + i, c.equals(zero.subarray(0, to - from)) ? 'zero' : 'data')
        }
      }
    }
  } finally {
    await child.close()
    await parent?.close()
  }
  return out.extents
}

/** Reads `length` bytes at `offset` of a device, in slices of `IO_SIZE`. */
export function deviceReader(path: string): ReadData {
  return async function* read(offset, length) {
    const fh = await open(path, 'r')
    try {
      for (let done = 0; done < length; ) {
        const n = Math.min(IO_SIZE, length - done)
        const buf = Buffer.alloc(n)
        await readFully(fh, buf, n, offset + done)
        yield buf
        done += n
      }
    } finally {
      await fh.close()
    }
  }
}

/**
 * Writes an opened hyperlayer's extents into a device (or file) that holds the parent's bytes,
 * then flushes it. A `zero` extent is written as zeros: on a thin snapshot, that is what makes
 * the block read zeros as it does in the child.
 */
export async function writeExtents(patch: OpenHyperlayer, path: string, options: AbortOptions = {}) {
  const fh = await open(path, 'r+')
  try {
    const zero = Buffer.alloc(Math.min(IO_SIZE, patch.header.blockSize))
    await patch.copyData({
      async write(offset, chunk) {
        options.signal?.throwIfAborted()
        await writeFully(fh, chunk, offset)
      },
      async zero(offset, length) {
        for (let done = 0; done < length; done += zero.byteLength) {
          options.signal?.throwIfAborted()
          await writeFully(fh, zero.subarray(0, Math.min(zero.byteLength, length - done)), offset + done)
        }
      }
    })
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** Merges adjacent blocks of one kind into extents, in ascending order. */
class ExtentBuilder {
  readonly extents: HyperlayerExtent[] = []

  add(block: number, kind: HyperlayerExtent['kind']): void {
    const last = this.extents.at(-1)
    if (last && last.kind === kind && last.block + last.count === block && last.count < 0xffffffff) {
      last.count++
      return
    }
    if (this.extents.length >= MAX_EXTENTS) {
      throw new InvalidHyperlayerError(`the volumes differ in more than ${MAX_EXTENTS} places`)
    }
    this.extents.push({ block, count: 1, kind })
  }
}

/** Sorts, clips to the volume and merges overlapping or touching ranges. */
function normalize(ranges: readonly BlockRange[], blocks: number): BlockRange[] {
  const sorted = [...ranges].filter((r) => r.count > 0 && r.block < blocks).sort((x, y) => x.block - y.block)
  const out: BlockRange[] = []
  for (const r of sorted) {
    const end = Math.min(r.block + r.count, blocks)
    const last = out.at(-1)
    if (last && r.block <= last.block + last.count) last.count = Math.max(last.count, end - last.block)
    else out.push({ block: r.block, count: end - r.block })
  }
  return out
}

async function readFully(fh: FileHandle, buf: Buffer, length: number, position: number): Promise<void> {
  for (let done = 0; done < length; ) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done)
    if (bytesRead === 0) throw new Error(`unexpected end of device at byte ${position + done}`)
    done += bytesRead
  }
}

async function writeFully(fh: FileHandle, chunk: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < chunk.byteLength; ) {
    const { bytesWritten } = await fh.write(chunk, done, chunk.byteLength - done, position + done)
    done += bytesWritten
  }
}
