/**
 * Fuzz targets for binary formats: piece lists and piece-protocol frames (peers), layer tars
 * and their compression (registries, peers), and hyperlayer headers and extent tables.
 */
import assert from 'node:assert/strict'
import { gzipSync } from 'node:zlib'
import { MIN_PIECE_SIZE } from '../../../src/constants.ts'
import { digestOf } from '../../../src/content/digest.ts'
import { buildPieceList, decodePieceList, encodePieceList } from '../../../src/content/piece-list.ts'
import {
  InvalidHyperlayerError,
  InvalidPieceListError,
  ProtocolViolationError,
  UnsafeLayerError
} from '../../../src/errors.ts'
import { decompressLayer } from '../../../src/materialize/decompress.ts'
import { metadataOf } from '../../../src/materialize/entry-metadata.ts'
import { entryComponents } from '../../../src/materialize/entry-path.ts'
import {
  HYPERLAYER_MAGIC,
  type HyperlayerExtent,
  type HyperlayerHeader,
  openHyperlayer,
  writeHyperlayer
} from '../../../src/materialize/hyperlayer-format.ts'
import { readTar } from '../../../src/materialize/tar-entries.ts'
import { Bitfield } from '../../../src/p2p/bitfield.ts'
import { encodeFrame, FrameDecoder, type WireMessage } from '../../../src/p2p/wire.ts'
import { type TarSpec, tarOf } from '../../unit/materialize/tars.ts'
import type { FuzzTarget } from './engine.ts'

const words = (...w: (string | number[])[]) =>
  w.map((s) => (typeof s === 'string' ? Buffer.from(s, 'latin1') : Buffer.from(s)))

export const pieceListTarget: FuzzTarget = {
  name: 'piece-list',
  run(data) {
    const pl = decodePieceList(data)
    // One list, one encoding: what decodes encodes back to the same bytes.
    assert.equal(Buffer.compare(encodePieceList(pl), data), 0, 'piece list encoding is not canonical')
  },
  expected: (err) => err instanceof InvalidPieceListError,
  seeds: [1, 3 * MIN_PIECE_SIZE + 17, 5 * MIN_PIECE_SIZE].map((n) => {
    const blob = Buffer.alloc(n, 7)
    return Buffer.from(encodePieceList(buildPieceList(digestOf(blob), blob, MIN_PIECE_SIZE)))
  }),
  dictionary: words('SHPL', [1], [0, 1, 0, 0], [0xff, 0xff, 0xff, 0xff]),
  maxLength: 2048,
  covers: /\/src\/content\/(piece-list|pieces|digest)\.ts$/
}

const HASH = 'ab'.repeat(32)
const SAMPLE: WireMessage[] = [
  {
    type: 'hello',
    digest: `sha256:${HASH}`,
    pieceListId: `sha256:${'cd'.repeat(32)}`,
    proof: new Uint8Array(32)
  },
  { type: 'hello', digest: `sha256:${HASH}` },
  { type: 'piece-list', bytes: pieceListTarget.seeds[1] as Buffer },
  { type: 'bitfield', bits: Uint8Array.of(0xff, 0xe0) },
  { type: 'have', index: 3, sha256: HASH },
  { type: 'fetching', index: 300 },
  { type: 'request', index: 0 },
  { type: 'piece', index: 2, data: Buffer.alloc(40, 1) },
  { type: 'cancel', index: 1 },
  { type: 'busy', retryAfterMs: 1500 },
  { type: 'choke' },
  { type: 'unchoke' },
  { type: 'reject', index: 4, code: 'BLOB_UNKNOWN' },
  { type: 'partial', size: 3 * MIN_PIECE_SIZE, pieceSize: MIN_PIECE_SIZE },
  { type: 'peers', peers: [{ peerId: '12D3KooWabc', addresses: ['/ip4/127.0.0.1/tcp/4001'] }] }
]

/** A message with its byte fields as hex, so a view and a copy compare equal. */
function plain(m: WireMessage): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(m).map(([k, v]) => [k, v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v])
  )
}

export const wireTarget: FuzzTarget = {
  name: 'wire',
  run(data) {
    // The first byte picks how the stream is cut into chunks, as the network cuts it.
    const step = 1 + ((data[0] ?? 0) % 23)
    const stream = data.subarray(1)
    const decoder = new FrameDecoder()
    const got: WireMessage[] = []
    for (let at = 0; at < stream.length; at += step) {
      decoder.push(stream.subarray(at, at + step))
      for (const m of decoder.frames()) got.push(m)
    }
    decoder.end()
    for (const m of got) {
      // A client reads a bitfield against the piece count it knows: here, one that fits its length.
      if (m.type === 'bitfield')
        Bitfield.fromBytes(m.bits, Math.max(0, m.bits.length * 8 - ((data[0] ?? 0) % 8)))
      // What one end decodes, the other end can encode, and it decodes to the same message.
      let again: WireMessage[]
      try {
        const d = new FrameDecoder()
        d.push(encodeFrame(m))
        again = [...d.frames()]
      } catch (err) {
        throw new assert.AssertionError({ message: `a decoded ${m.type} does not round-trip: ${err}` })
      }
      assert.deepEqual(again.map(plain), [plain(m)])
    }
  },
  expected: (err) => err instanceof ProtocolViolationError,
  seeds: [
    Buffer.concat([Buffer.from([0]), ...SAMPLE.map(encodeFrame)]),
    ...SAMPLE.map((m, i) => Buffer.concat([Buffer.from([i]), encodeFrame(m)]))
  ],
  dictionary: words([0x80, 0x80, 0x80, 0x80, 0x01], [0xff, 0xff, 0xff, 0x7f], [0], [14, 16]),
  maxLength: 4096,
  covers: /\/src\/p2p\/(wire|bitfield)\.ts$/
}

const TAR_SEEDS: TarSpec[][] = [
  [
    { header: { name: 'dir/', type: 'directory', mode: 0o755 } },
    { header: { name: 'dir/file', type: 'file', mode: 0o644, uid: 1000, gid: 1000 }, data: 'hello\n' },
    { header: { name: 'dir/link', type: 'symlink', linkname: 'file' } },
    { header: { name: 'dir/hard', type: 'link', linkname: 'dir/file' } },
    { header: { name: 'dir/.wh.gone', type: 'file' }, data: '' },
    { header: { name: 'dir/.wh..wh..opq', type: 'file' }, data: '' }
  ],
  [
    {
      header: {
        name: 'p',
        type: 'file',
        pax: { path: `${'long/'.repeat(30)}name`, 'SCHILY.xattr.user.a': 'b', mtime: '1.5', uid: '7' }
      },
      data: 'x'
    },
    { header: { name: 'dev', type: 'character-device', devmajor: 1, devminor: 3 } },
    { header: { name: 'fifo', type: 'fifo' } },
    { header: { name: `${'n'.repeat(120)}/${'m'.repeat(120)}`, type: 'file' }, data: 'y'.repeat(600) }
  ]
]

async function* once(data: Uint8Array): AsyncGenerator<Uint8Array> {
  yield data
}

export const tarTarget: FuzzTarget = {
  name: 'tar',
  async run(data) {
    for await (const { header, body } of readTar(decompressLayer(once(data)))) {
      entryComponents(header.name)
      if (header.type === 'link') entryComponents(header.linkname ?? '', 'hard-link target')
      metadataOf(header)
      for await (const _ of body) {
        // read the data as extraction does
      }
    }
  },
  expected: (err) => err instanceof UnsafeLayerError,
  seeds: [
    ...(await Promise.all(TAR_SEEDS.map(tarOf))),
    gzipSync(await tarOf(TAR_SEEDS[0] as TarSpec[])),
    // A zstd frame (made by `zstd -3` of a one-entry tar): fzstd is JavaScript, fuzzed too.
    Buffer.from(
      'KLUv/QRYjQIApAJmaWxlADAwMDY0NCAAMDYgMCAwMTAwMjMgADAAdXN0YXIAMCBoZWxsbwoOACiBHwiAAgXQCiAgSMAopMOaHPwGyQCQPIABLKwgANfhCWgB/kfBrg==',
      'base64'
    )
  ],
  dictionary: words('ustar\u000000', 'ustar  \u0000', '././@LongLink', 'path=', '../', '/', '\u0000'),
  maxLength: 8192,
  covers:
    /\/src\/materialize\/(tar-entries|entry-path|entry-metadata|decompress)\.ts$|\/node_modules\/(tar-stream|fzstd)\//
}

const BS = 4096
const HYPERLAYERS: Array<[HyperlayerHeader, HyperlayerExtent[]]> = [
  [
    { blockSize: BS, volumeSize: 16 * BS, extentCount: 2, dataBytes: 2 * BS, fstype: 'ext4' },
    [
      { block: 1, count: 2, kind: 'data' },
      { block: 5, count: 3, kind: 'zero' }
    ]
  ],
  [
    { blockSize: 512, volumeSize: 8 * 512 + 512, extentCount: 1, dataBytes: 512, parent: HASH },
    [{ block: 8, count: 1, kind: 'data' }]
  ]
]

async function hyperlayerBytes([header, extents]: [HyperlayerHeader, HyperlayerExtent[]]): Promise<Buffer> {
  const parts: Uint8Array[] = []
  const read = async function* (offset: number, length: number) {
    yield Buffer.alloc(length, offset % 251)
  }
  for await (const p of writeHyperlayer(header, extents, read)) parts.push(p)
  return Buffer.concat(parts)
}

export const hyperlayerTarget: FuzzTarget = {
  name: 'hyperlayer',
  async run(data) {
    const hl = await openHyperlayer(once(data))
    let written = 0
    let zeroed = 0
    await hl.copyData(
      {
        write: async (offset, chunk) => {
          assert.ok(offset + chunk.byteLength <= hl.header.volumeSize, 'a write past the volume')
          written += chunk.byteLength
        },
        zero: async (offset, length) => {
          assert.ok(offset + length <= hl.header.volumeSize, 'a zero extent past the volume')
          zeroed += length
        }
      },
      1024
    )
    assert.equal(written, hl.header.dataBytes)
    assert.ok(written + zeroed <= hl.header.volumeSize)
  },
  expected: (err) => err instanceof InvalidHyperlayerError,
  seeds: await Promise.all(HYPERLAYERS.map(hyperlayerBytes)),
  dictionary: words(HYPERLAYER_MAGIC, [0, 1], [0, 0, 0x10, 0], [0, 0, 2, 0], [1]),
  maxLength: 4096 + 2 * BS,
  covers: /\/src\/materialize\/(hyperlayer-format|byte-reader)\.ts$/
}
