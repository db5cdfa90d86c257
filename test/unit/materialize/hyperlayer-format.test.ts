import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { compareBlocks, deviceReader, writeExtents } from '../../../src/materialize/hyperlayer-blocks.ts'
import {
  decodeHeader,
  EXTENT_SIZE,
  encodeExtents,
  encodeHeader,
  HEADER_SIZE,
  type HyperlayerExtent,
  type HyperlayerHeader,
  openHyperlayer,
  writeHyperlayer
} from '../../../src/materialize/hyperlayer-format.ts'

const BS = 4096
const PARENT = 'ab'.repeat(32)

/** Concatenates a stream. */
async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = []
  for await (const c of it) parts.push(c)
  return Buffer.concat(parts)
}

/** Yields `bytes` in pieces of `size`, as a network stream would. */
async function* pieces(bytes: Uint8Array, size = 1000): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.byteLength; i += size) yield bytes.subarray(i, i + size)
}

/** A deterministic volume image: block i filled with byte (i * 7 + salt) % 251 + 1. */
function volume(blocks: number, salt = 0): Buffer {
  const b = Buffer.alloc(blocks * BS)
  for (let i = 0; i < blocks; i++) b.fill(((i * 7 + salt) % 251) + 1, i * BS, (i + 1) * BS)
  return b
}

const invalid = (pattern: RegExp) => (err: Error & { code?: string }) => {
  assert.equal(err.code, 'HYPERLAYER_INVALID', err.message)
  assert.match(err.message, pattern)
  return true
}

describe('hyperlayer format', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-hl-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('round-trips a header, root or with a parent', () => {
    const h: HyperlayerHeader = {
      blockSize: 65536,
      volumeSize: 10 * 1024 ** 3,
      extentCount: 3,
      dataBytes: 131072,
      fstype: 'xfs',
      parent: PARENT
    }
    const bytes = encodeHeader(h)
    assert.equal(bytes.byteLength, HEADER_SIZE)
    assert.equal(Buffer.from(bytes).toString('latin1', 0, 8), 'SHOALHYP')
    assert.deepEqual(decodeHeader(bytes), h)
    const root = { blockSize: 512, volumeSize: 1024, extentCount: 0, dataBytes: 0 }
    assert.deepEqual(decodeHeader(encodeHeader(root)), root)
  })

  it('refuses malformed headers', () => {
    const good = Buffer.from(
      encodeHeader({ blockSize: BS, volumeSize: 16 * BS, extentCount: 1, dataBytes: BS, parent: PARENT })
    )
    const bad = (edit: (b: Buffer) => void) => {
      const b = Buffer.from(good)
      edit(b)
      return b
    }
    assert.throws(() => decodeHeader(good.subarray(0, 50)), invalid(/needs 96 bytes/))
    assert.throws(() => decodeHeader(bad((b) => b.write('SHOALXXX', 0, 'latin1'))), invalid(/bad magic/))
    assert.throws(() => decodeHeader(bad((b) => b.writeUInt16BE(2, 8))), invalid(/version 2/))
    assert.throws(() => decodeHeader(bad((b) => b.writeUInt16BE(1, 10))), invalid(/flags/))
    assert.throws(() => decodeHeader(bad((b) => b.writeUInt32BE(1000, 12))), invalid(/block size 1000/))
    assert.throws(() => decodeHeader(bad((b) => b.writeUInt32BE(256, 12))), invalid(/block size 256/))
    assert.throws(() => decodeHeader(bad((b) => b.writeBigUInt64BE(0n, 16))), invalid(/volume size 0/))
    assert.throws(() => decodeHeader(bad((b) => b.writeBigUInt64BE(2n ** 60n, 16))), invalid(/volume size/))
    assert.throws(() => decodeHeader(bad((b) => b.writeUInt32BE(17, 24))), invalid(/17 extents: at most 16/))
    assert.throws(() => decodeHeader(bad((b) => b.writeUInt8(9, 28))), invalid(/file system code 9/))
    assert.throws(
      () => decodeHeader(bad((b) => b.writeBigUInt64BE(BigInt(17 * BS), 32))),
      invalid(/data length/)
    )
    assert.throws(() => decodeHeader(bad((b) => b.writeUInt8(1, 90))), invalid(/reserved/))
  })

  it('writes a patch streaming and reads it back, extent by extent', async () => {
    const child = volume(16, 3)
    const extents: HyperlayerExtent[] = [
      { block: 1, count: 2, kind: 'data' },
      { block: 5, count: 1, kind: 'zero' },
      { block: 15, count: 1, kind: 'data' }
    ]
    const header: HyperlayerHeader = {
      blockSize: BS,
      volumeSize: 16 * BS,
      extentCount: 3,
      dataBytes: 3 * BS,
      parent: PARENT
    }
    const read = async function* (offset: number, length: number) {
      yield child.subarray(offset, offset + 100)
      yield child.subarray(offset + 100, offset + length)
    }
    const blob = await collect(writeHyperlayer(header, extents, read))
    assert.equal(blob.byteLength, HEADER_SIZE + 3 * EXTENT_SIZE + 3 * BS)
    const patch = await openHyperlayer(pieces(blob, 777))
    assert.deepEqual(patch.header, header)
    assert.deepEqual(patch.extents, extents)
    const target = volume(16, 0)
    await patch.copyData(
      {
        async write(offset, chunk) {
          target.set(chunk, offset)
        },
        async zero(offset, length) {
          target.fill(0, offset, offset + length)
        }
      },
      1500
    )
    const expected = volume(16, 0)
    child.copy(expected, BS, BS, 3 * BS)
    expected.fill(0, 5 * BS, 6 * BS)
    child.copy(expected, 15 * BS, 15 * BS, 16 * BS)
    assert.ok(target.equals(expected))
  })

  it('refuses extents out of range, out of order, empty, or not adding up to the data length', async () => {
    const h = (extentCount: number, dataBytes: number): HyperlayerHeader => ({
      blockSize: BS,
      volumeSize: 8 * BS,
      extentCount,
      dataBytes
    })
    const open = (header: HyperlayerHeader, extents: HyperlayerExtent[]) =>
      openHyperlayer(pieces(Buffer.concat([encodeHeader(header), encodeExtents(extents)])))
    await assert.rejects(
      open(h(1, BS), [{ block: 8, count: 1, kind: 'data' }]),
      invalid(/ends past the volume/)
    )
    await assert.rejects(open(h(1, 2 * BS), [{ block: 7, count: 2, kind: 'data' }]), invalid(/ends past/))
    await assert.rejects(
      open(h(2, 2 * BS), [
        { block: 3, count: 2, kind: 'data' },
        { block: 4, count: 1, kind: 'zero' }
      ]),
      invalid(/overlaps/)
    )
    await assert.rejects(
      open(h(2, 2 * BS), [
        { block: 5, count: 1, kind: 'data' },
        { block: 2, count: 1, kind: 'data' }
      ]),
      invalid(/precedes/)
    )
    await assert.rejects(open(h(1, 0), [{ block: 1, count: 0, kind: 'zero' }]), invalid(/empty/))
    await assert.rejects(open(h(1, BS), [{ block: 1, count: 2, kind: 'data' }]), invalid(/hold 8192 bytes/))
    const table = Buffer.from(encodeExtents([{ block: 1, count: 1, kind: 'data' }]))
    table.writeUInt8(7, 12)
    await assert.rejects(
      openHyperlayer(pieces(Buffer.concat([encodeHeader(h(1, BS)), table]))),
      invalid(/kind 7/)
    )
  })

  it('refuses a truncated header, table or data, and bytes after the last extent', async () => {
    const header: HyperlayerHeader = { blockSize: BS, volumeSize: 4 * BS, extentCount: 1, dataBytes: BS }
    const extents: HyperlayerExtent[] = [{ block: 2, count: 1, kind: 'data' }]
    const whole = await collect(
      writeHyperlayer(header, extents, async function* () {
        yield Buffer.alloc(BS, 9)
      })
    )
    const sink = { write: async () => {}, zero: async () => {} }
    await assert.rejects(openHyperlayer(pieces(whole.subarray(0, 40))), invalid(/header is truncated/))
    await assert.rejects(
      openHyperlayer(pieces(whole.subarray(0, HEADER_SIZE + 8))),
      invalid(/table is truncated/)
    )
    const short = await openHyperlayer(pieces(whole.subarray(0, whole.byteLength - 1)))
    await assert.rejects(short.copyData(sink), invalid(/data ends inside the extent/))
    const long = await openHyperlayer(pieces(Buffer.concat([whole, Buffer.from('x')])))
    await assert.rejects(long.copyData(sink), invalid(/bytes follow the last extent/))
  })

  it('a writer given too few bytes by the volume fails instead of writing a short patch', async () => {
    const header: HyperlayerHeader = { blockSize: BS, volumeSize: 4 * BS, extentCount: 1, dataBytes: BS }
    await assert.rejects(
      collect(
        writeHyperlayer(header, [{ block: 0, count: 1, kind: 'data' }], async function* () {
          yield Buffer.alloc(10)
        })
      ),
      /gave 10 of the 4096 bytes/
    )
  })

  it('compares two volume files block by block and rebuilds the child from the parent', async () => {
    const parent = volume(64, 0)
    const child = Buffer.from(parent)
    child.fill(0xee, 10 * BS + 5, 10 * BS + 9) // a few bytes of one block
    child.fill(0x11, 20 * BS, 23 * BS) // three whole blocks
    child.fill(0, 40 * BS, 42 * BS) // two blocks zeroed (a discard)
    child.fill(0x22, 63 * BS + 100, 63 * BS + 101) // the last block
    const pPath = join(dir, 'parent.img')
    const cPath = join(dir, 'child.img')
    const outPath = join(dir, 'out.img')
    await writeFile(pPath, parent)
    await writeFile(cPath, child)
    const all = await compareBlocks({
      parent: pPath,
      child: cPath,
      blockSize: BS,
      volumeSize: child.byteLength
    })
    assert.deepEqual(all, [
      { block: 10, count: 1, kind: 'data' },
      { block: 20, count: 3, kind: 'data' },
      { block: 40, count: 2, kind: 'zero' },
      { block: 63, count: 1, kind: 'data' }
    ])
    // Candidates (as thin_delta gives) that cover the changes and more give the same extents.
    const some = await compareBlocks({
      parent: pPath,
      child: cPath,
      blockSize: BS,
      volumeSize: child.byteLength,
      candidates: [
        { block: 60, count: 10 },
        { block: 8, count: 4 },
        { block: 20, count: 2 },
        { block: 21, count: 3 },
        { block: 39, count: 4 },
        { block: 30, count: 1 }
      ]
    })
    assert.deepEqual(some, all)
    const header: HyperlayerHeader = {
      blockSize: BS,
      volumeSize: child.byteLength,
      extentCount: all.length,
      dataBytes: 5 * BS
    }
    const blob = await collect(writeHyperlayer(header, all, deviceReader(cPath)))
    assert.equal(blob.byteLength, HEADER_SIZE + 4 * EXTENT_SIZE + 5 * BS, 'only changed blocks are shipped')
    await writeFile(outPath, parent)
    await writeExtents(await openHyperlayer(pieces(blob, 3000)), outPath)
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
    assert.equal(sha(await readFile(outPath)), sha(child))
  })

  it('a root diff ships every non-zero block of the child', async () => {
    const child = Buffer.alloc(16 * BS)
    child.fill(5, 3 * BS, 4 * BS)
    child.fill(6, 9 * BS, 11 * BS)
    const cPath = join(dir, 'root.img')
    await writeFile(cPath, child)
    assert.deepEqual(await compareBlocks({ child: cPath, blockSize: BS, volumeSize: child.byteLength }), [
      { block: 3, count: 1, kind: 'data' },
      { block: 9, count: 2, kind: 'data' }
    ])
  })
})
