/**
 * The piece protocol under hostile peers, over real libp2p streams between real hosts: a rogue
 * client sends a real piece server oversized and truncated frames, unknown types, requests for
 * pieces that do not exist, floods and garbage; a rogue server answers a real client with
 * malformed piece lists and geometry, pieces it was not asked for and frames over every limit.
 * Each must end in a reject or a reset stream (server) or a typed error (client), and both must
 * go on serving and fetching verified pieces afterwards.
 */
import '../../src/polyfill.ts'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { pino } from 'pino'
import { systemClock } from '../../src/clock.ts'
import { MIN_PIECE_SIZE, MiB } from '../../src/constants.ts'
import { sha256Hex } from '../../src/content/digest.ts'
import { encodePieceList } from '../../src/content/piece-list.ts'
import { ShoalError } from '../../src/errors.ts'
import { loadOrCreatePrivateKey } from '../../src/p2p/identity.ts'
import { PieceExchange } from '../../src/p2p/piece-exchange.ts'
import { generateSwarmKey, parseSwarmKey } from '../../src/p2p/swarm-key.ts'
import { SwarmNode } from '../../src/p2p/swarm-node.ts'
import { encodeFrame, FrameDecoder, type WireMessage } from '../../src/p2p/wire.ts'
import { mulberry32 } from '../../src/sim/random.ts'
import { MemoryBlobStore } from '../../src/store/memory-blob-store.ts'
import { makeBlob, seedBlob, waitFor } from '../harness/blobs.ts'
import { scaled } from './scale.ts'
import { tally } from './tally.ts'

const logger = pino({ level: 'silent' })
const LISTEN = ['/ip4/127.0.0.1/tcp/0']
const frame = (m: WireMessage) => Buffer.from(encodeFrame(m))
const raw = (...bytes: number[]) => Buffer.from(bytes)

/** What a server did with a hostile stream. */
type Outcome = 'reset' | `reject ${string}` | 'served' | 'closed'

describe('the piece protocol under hostile peers', { timeout: 120_000 }, () => {
  let dir: string
  const swarmKey = parseSwarmKey(generateSwarmKey())
  const nodes: SwarmNode[] = []
  const exchanges: PieceExchange[] = []
  const blob = makeBlob(3 * MIN_PIECE_SIZE + 100)
  let server: SwarmNode
  let client: SwarmNode
  let rogue: SwarmNode
  let serverX: PieceExchange
  let clientX: PieceExchange
  const peerOf = (node: SwarmNode) => ({ peerId: node.peerId, addresses: node.addresses() })
  const hello = frame({ type: 'hello', digest: blob.digest })

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-hostile-wire-'))
    for (const name of ['server', 'client', 'rogue']) {
      const privateKey = await loadOrCreatePrivateKey(join(dir, `${name}.key`))
      const node = new SwarmNode({ logger }, { listen: LISTEN, bootstrap: [], swarmKey, privateKey })
      await node.start()
      nodes.push(node)
    }
    ;[server, client, rogue] = nodes as [SwarmNode, SwarmNode, SwarmNode]
    const store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 64 * MiB })
    await store.start()
    await seedBlob(store, blob)
    serverX = new PieceExchange({ node: server, store, logger })
    const clientStore = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 64 * MiB })
    clientX = new PieceExchange(
      { node: client, store: clientStore, logger },
      { openTimeoutMs: 2000, requestTimeoutMs: 2000 }
    )
    exchanges.push(serverX, clientX)
    for (const x of exchanges) await x.start()
  })

  after(async () => {
    await Promise.all(exchanges.map((x) => x.stop()))
    await Promise.all(nodes.map((n) => n.stop()))
    await rm(dir, { recursive: true, force: true })
  })

  /** The real client still gets every piece of the blob from the real server, verified. */
  async function serverStillServes(): Promise<void> {
    const session = await clientX.openSession(peerOf(server), blob.digest)
    for (let i = 0; i < blob.pieceList.hashes.length; i++) {
      assert.equal(sha256Hex(await session.fetchPiece(i)), blob.pieceList.hashes[i])
    }
    await session.close()
  }

  /** Sends `bytes` on a new stream from the rogue and tells what the server made of it. */
  async function probe(bytes: Uint8Array, closeWrite = true): Promise<Outcome> {
    const stream = await rogue.libp2p.dialProtocol(multiaddr(server.addresses()[0]!), serverX.protocol)
    const decoder = new FrameDecoder()
    const got: WireMessage[] = []
    const ended = new Promise<void>((resolve) => {
      stream.addEventListener('message', (evt) => {
        try {
          decoder.push(evt.data)
          for (const m of decoder.frames()) got.push(m)
        } catch {
          // what the server sent is its business here
        }
      })
      stream.addEventListener('close', () => resolve(), { once: true })
      stream.addEventListener('remoteCloseWrite', () => resolve(), { once: true })
    })
    stream.send(bytes)
    if (closeWrite) await stream.close().catch(() => undefined)
    await Promise.race([ended, new Promise((r) => setTimeout(r, 3000))])
    const status = stream.status
    if (stream.status === 'open') stream.abort(new Error('probe done'))
    const reject = got.find((m) => m.type === 'reject')
    if (reject?.type === 'reject') return `reject ${reject.code}`
    if (status === 'reset' || status === 'aborted') return 'reset'
    return got.some((m) => m.type === 'piece') ? 'served' : 'closed'
  }

  it('a rogue client gets a reject or a reset stream, and the server goes on serving', async () => {
    const request = (index: number) => frame({ type: 'request', index })
    const cases: [string, Buffer, Outcome, boolean?][] = [
      ['a length prefix over every limit', raw(0xff, 0xff, 0xff, 0x7f), 'reset'],
      ['a run of continuation bytes', raw(0x80, 0x80, 0x80, 0x80, 0x80, 0x80), 'reset'],
      ['an empty frame', raw(0x00), 'reset'],
      ['an unknown type', raw(2, 99, 0), 'reset'],
      ['a request before the hello', request(0), 'reset'],
      ['a hello with unknown flags', Buffer.concat([raw(34, 1), hello.subarray(2, 34), raw(0x80)]), 'reset'],
      ['a hello cut short', hello.subarray(0, 20), 'reset'],
      [
        'a hello promising a piece list id it lacks',
        Buffer.concat([raw(34, 1), hello.subarray(2, 34), raw(1)]),
        'reset'
      ],
      [
        'a hello for a blob nobody has',
        frame({ type: 'hello', digest: `sha256:${'0'.repeat(64)}` }),
        'reject BLOB_UNKNOWN'
      ],
      [
        'a request past the last piece',
        Buffer.concat([hello, request(10_000)]),
        'reject RANGE_NOT_SATISFIABLE'
      ],
      [
        'a request over the largest index',
        Buffer.concat([hello, raw(5, 6, 0x80, 0x80, 0x80, 0x01)]),
        'reset'
      ],
      ['a request with a padded varint', Buffer.concat([hello, raw(3, 6, 0x80, 0x00)]), 'reset'],
      [
        '5000 requests at once',
        Buffer.concat([hello, ...Array.from({ length: 5000 }, () => request(0))]),
        'reset'
      ],
      [
        'a piece sent to the server',
        Buffer.concat([hello, frame({ type: 'piece', index: 0, data: Buffer.alloc(10) })]),
        'reset'
      ],
      ['a second hello', Buffer.concat([hello, hello]), 'reset'],
      ['a bitfield over 64 KiB', Buffer.concat([hello, raw(0x82, 0x80, 0x04, 3)]), 'reset'],
      [
        'a peers frame claiming a million peers',
        Buffer.concat([hello, raw(5, 14, 0xc0, 0x84, 0x3d, 0)]),
        'reset'
      ],
      ['a reject with a lower-case code', Buffer.concat([hello, raw(5, 12, 0, 2, 0x61, 0x62)]), 'reset'],
      ['a frame cut by the end of the stream', Buffer.concat([hello, raw(10, 6)]), 'reset'],
      [
        'a cancel of nothing, then a request',
        Buffer.concat([hello, frame({ type: 'cancel', index: 2 }), request(0)]),
        'served'
      ]
    ]
    const got: [string, Outcome][] = []
    for (const [name, bytes, , closeWrite] of cases) got.push([name, await probe(bytes, closeWrite ?? true)])
    assert.deepEqual(
      got,
      cases.map(([name, , want]) => [name, want])
    )
    // Garbage, and garbage after a valid hello: never anything but a reject, a reset or a close.
    const random = mulberry32(6)
    const n = scaled(40)
    for (let i = 0; i < n; i++) {
      const junk = Buffer.from(
        Array.from({ length: 1 + Math.floor(random() * 2000) }, () => Math.floor(random() * 256))
      )
      const outcome = await probe(i % 2 === 0 ? junk : Buffer.concat([hello, junk]))
      assert.ok(outcome !== 'served' || i % 2 === 1, `garbage was served: ${outcome}`)
    }
    tally('hostile inputs tried', cases.length + n, import.meta.url)
    await waitFor('the rogue sessions to end', () => serverX.activeUploads === 0, 10_000)
    await serverStillServes()
  })

  it('a rogue server gets a typed error from the real client, and nothing unverified', async () => {
    const pl = blob.pieceList
    const good = encodePieceList(pl)
    const other = makeBlob(MIN_PIECE_SIZE + 1)
    const answers: [string, (stream: Stream, msg: WireMessage) => void, string[]][] = [
      [
        'garbage for a piece list',
        (s) => s.send(frame({ type: 'piece-list', bytes: Buffer.from('SHPL garbage') })),
        ['INVALID_PIECE_LIST']
      ],
      [
        'the piece list of another blob',
        (s) => s.send(frame({ type: 'piece-list', bytes: encodePieceList(other.pieceList) })),
        ['INVALID_PIECE_LIST']
      ],
      [
        'a bitfield of the wrong length',
        (s) => {
          s.send(frame({ type: 'piece-list', bytes: good }))
          s.send(frame({ type: 'bitfield', bits: Buffer.alloc(40, 0xff) }))
        },
        ['PROTOCOL_VIOLATION']
      ],
      [
        'a geometry of 1 PiB',
        (s) => s.send(frame({ type: 'partial', size: 2 ** 50, pieceSize: MIN_PIECE_SIZE })),
        ['SIZE_MISMATCH', 'INVALID_PIECE_LIST', 'PROTOCOL_VIOLATION']
      ],
      [
        'a geometry of pieces of 1 byte',
        (s) => s.send(frame({ type: 'partial', size: pl.size, pieceSize: 1 })),
        ['INVALID_PIECE_LIST', 'PROTOCOL_VIOLATION', 'SIZE_MISMATCH']
      ],
      [
        'a have past the last piece',
        (s) => {
          s.send(frame({ type: 'partial', size: pl.size, pieceSize: pl.pieceSize }))
          s.send(frame({ type: 'have', index: 9999, sha256: pl.hashes[0]! }))
        },
        ['PROTOCOL_VIOLATION', 'UPSTREAM_UNAVAILABLE']
      ],
      [
        'a frame over every limit',
        (s) => s.send(raw(0xff, 0xff, 0xff, 0x7f)),
        ['PROTOCOL_VIOLATION', 'UPSTREAM_UNAVAILABLE']
      ],
      ['an unknown type', (s) => s.send(raw(2, 77, 1)), ['PROTOCOL_VIOLATION', 'UPSTREAM_UNAVAILABLE']],
      [
        'a peers frame with a bad peer id',
        (s) =>
          s.send(
            Buffer.concat([frame({ type: 'piece-list', bytes: good }), raw(6, 14, 1, 2, 0x30, 0x30, 0)])
          ),
        ['PROTOCOL_VIOLATION', 'UPSTREAM_UNAVAILABLE']
      ],
      ['silence', () => {}, ['UPSTREAM_TIMEOUT']],
      ['a closed stream', (s) => void s.close(), ['UPSTREAM_UNAVAILABLE', 'PROTOCOL_VIOLATION']],
      ['a reset stream', (s) => s.abort(new Error('rogue')), ['UPSTREAM_UNAVAILABLE', 'PROTOCOL_VIOLATION']]
    ]
    // Served correctly, then the requested piece is wrong in one way or another.
    const pieceLies: [string, (index: number) => Uint8Array, string[]][] = [
      [
        'a piece with flipped bytes',
        (i) => frame({ type: 'piece', index: i, data: Buffer.alloc(MIN_PIECE_SIZE, 1) }),
        ['DIGEST_MISMATCH']
      ],
      [
        'a piece one byte short',
        (i) => frame({ type: 'piece', index: i, data: blob.data.subarray(0, MIN_PIECE_SIZE - 1) }),
        ['SIZE_MISMATCH', 'DIGEST_MISMATCH']
      ],
      [
        'a piece nobody asked for',
        () =>
          frame({
            type: 'piece',
            index: 2,
            data: blob.data.subarray(2 * MIN_PIECE_SIZE, 3 * MIN_PIECE_SIZE)
          }),
        ['PROTOCOL_VIOLATION', 'UPSTREAM_UNAVAILABLE']
      ],
      [
        'a piece over 64 MiB',
        () => raw(0x81, 0x80, 0x80, 0x40, 7),
        ['PROTOCOL_VIOLATION', 'UPSTREAM_UNAVAILABLE']
      ],
      [
        'a reject with a garbage code',
        () => raw(5, 12, 0, 2, 0x21, 0x21),
        ['PROTOCOL_VIOLATION', 'UPSTREAM_UNAVAILABLE']
      ]
    ]
    let k = 0
    const wrong: string[] = []
    const check = async (name: string, allowed: string[], run: () => Promise<unknown>) => {
      try {
        await run()
        wrong.push(`${name}: no error`)
      } catch (err) {
        if (!(err instanceof ShoalError) || !allowed.includes(err.code))
          wrong.push(
            `${name}: ${(err as Error).name} ${(err as { code?: string }).code} ${(err as Error).message}`
          )
      }
    }
    for (const [name, answer, allowed] of answers) {
      const prefix = `/rogue${k++}`
      await rogue.libp2p.handle(`${prefix}/pieces/1.0.0`, (stream) => {
        const d = new FrameDecoder()
        stream.addEventListener('message', (evt) => {
          d.push(evt.data)
          for (const m of d.frames()) if (m.type === 'hello') answer(stream, m)
        })
      })
      const x = new PieceExchange(
        {
          node: client,
          store: new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: MiB }),
          logger
        },
        { protocolPrefix: prefix, openTimeoutMs: 1500, requestTimeoutMs: 1500 }
      )
      exchanges.push(x)
      await x.start()
      await check(name, allowed, async () => {
        const session = await x.openSession(peerOf(rogue), blob.digest, { size: pl.size })
        await session.fetchPiece(0)
      })
    }
    for (const [name, lie, allowed] of pieceLies) {
      const prefix = `/rogue${k++}`
      await rogue.libp2p.handle(`${prefix}/pieces/1.0.0`, (stream) => {
        const d = new FrameDecoder()
        stream.addEventListener('message', (evt) => {
          d.push(evt.data)
          for (const m of d.frames()) {
            if (m.type === 'hello') {
              stream.send(frame({ type: 'piece-list', bytes: good }))
              stream.send(frame({ type: 'bitfield', bits: Buffer.from([0xe0]) }))
            } else if (m.type === 'request') stream.send(lie(m.index))
          }
        })
      })
      const x = new PieceExchange(
        {
          node: client,
          store: new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: MiB }),
          logger
        },
        { protocolPrefix: prefix, openTimeoutMs: 1500, requestTimeoutMs: 1500 }
      )
      exchanges.push(x)
      await x.start()
      await check(name, allowed, async () => {
        const session = await x.openSession(peerOf(rogue), blob.digest, { size: pl.size })
        const data = await session.fetchPiece(0)
        // Whatever a session hands out has passed the piece's hash.
        assert.equal(sha256Hex(data), pl.hashes[0])
      })
    }
    tally('hostile inputs tried', answers.length + pieceLies.length, import.meta.url)
    tally('corrupt bytes served', 0, import.meta.url)
    assert.deepEqual(wrong, [])
    await serverStillServes()
  })
})
