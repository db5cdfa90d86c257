import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import { UnsafeLayerError } from '../../../src/errors.ts'
import { decompressLayer } from '../../../src/materialize/decompress.ts'
import { MAX_ZSTD_WINDOW, ZstdFrameGuard } from '../../../src/materialize/zstd-frames.ts'
import { chunked, zstdOf } from './tars.ts'

/** Pushes `bytes` through a fresh guard in pieces of `size`. */
function guard(bytes: Uint8Array, size = 7): void {
  const g = new ZstdFrameGuard()
  for (let i = 0; i < bytes.length; i += size) g.push(bytes.subarray(i, i + size))
}

/** A single-segment frame declaring `size` bytes of content, made of RLE blocks of zeros. */
function rleFrame(size: number): Buffer {
  const head = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0, 0, 0, 0])
  head.writeUInt32LE(size, 5)
  const blocks: Buffer[] = []
  for (let left = size; left > 0; ) {
    const n = Math.min(128 * 1024, left)
    left -= n
    const h = (n << 3) | (1 << 1) | (left === 0 ? 1 : 0)
    blocks.push(Buffer.from([h & 0xff, (h >> 8) & 0xff, (h >> 16) & 0xff, 0]))
  }
  return Buffer.concat([head, ...blocks])
}

describe('ZstdFrameGuard', () => {
  it('passes what the reference encoder writes: levels, checksums, several frames, skippable frames', async () => {
    const data = Buffer.concat([randomBytes(300_000), Buffer.alloc(700_000, 3)])
    const frames = [await zstdOf(data), await zstdOf(data.subarray(0, 10))]
    const skippable = Buffer.concat([Buffer.from([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0]), Buffer.from('abc')])
    for (const bytes of [...frames, Buffer.concat([frames[0]!, skippable, frames[1]!])]) {
      for (const size of [1, 5, 4096, bytes.length]) guard(bytes, size)
    }
    guard(rleFrame(MAX_ZSTD_WINDOW))
  })

  it('refuses a frame whose window is over the limit before the decoder allocates it', () => {
    assert.throws(() => guard(rleFrame(MAX_ZSTD_WINDOW + 1)), { code: 'LAYER_UNSAFE', message: /window/ })
    // windowLog 31 in the window descriptor of a multi-segment frame.
    assert.throws(
      () => guard(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, (31 - 10) << 3])),
      /window of 2147483648/
    )
  })

  it('refuses reserved bits, reserved block types and a stream that is not zstd after a frame', () => {
    assert.throws(() => guard(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x08, 0])), /reserved frame header bit/)
    assert.throws(() => guard(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x20, 10, 0x07, 0, 0])), /reserved type/)
    assert.throws(() => guard(Buffer.concat([rleFrame(10), Buffer.from('tar!')])), /magic/)
  })

  it('a 61 KB layer declaring 2 GB is refused at once, not decoded into 2 GB of memory', {
    timeout: 20_000
  }, async () => {
    // Found by the hardening suite's fuzzer: fzstd allocates a frame's whole declared content.
    const started = performance.now()
    const before = process.memoryUsage().rss
    let out = 0
    await assert.rejects(async () => {
      for await (const chunk of decompressLayer(chunked(rleFrame(2_000_000_000), 65536))) out += chunk.length
    }, UnsafeLayerError)
    assert.equal(out, 0)
    assert.ok(process.memoryUsage().rss - before < 100 * 1024 * 1024)
    assert.ok(performance.now() - started < 5000)
  })
})
