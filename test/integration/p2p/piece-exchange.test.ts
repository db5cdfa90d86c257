import '../../../src/polyfill.ts'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { pino } from 'pino'
import { systemClock } from '../../../src/clock.ts'
import { KiB, MIN_PIECE_SIZE, MiB } from '../../../src/constants.ts'
import { digestOf, sha256Hex } from '../../../src/content/digest.ts'
import { encodePieceList } from '../../../src/content/piece-list.ts'
import { pieceCount, pieceRange } from '../../../src/content/pieces.ts'
import { BlobUnknownError, DigestMismatchError, PieceBusyError } from '../../../src/errors.ts'
import { TokenBucket } from '../../../src/fetch/token-bucket.ts'
import type { LiveBlob, LiveBlobEvent } from '../../../src/interface/peers.ts'
import { Bitfield } from '../../../src/p2p/bitfield.ts'
import { loadOrCreatePrivateKey } from '../../../src/p2p/identity.ts'
import { type ClientSession, PeerBusyError, PieceExchange } from '../../../src/p2p/piece-exchange.ts'
import { generateSwarmKey, parseSwarmKey } from '../../../src/p2p/swarm-key.ts'
import { SwarmNode } from '../../../src/p2p/swarm-node.ts'
import { encodeFrameParts, FrameDecoder, type WireMessage } from '../../../src/p2p/wire.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'
import { makeBlob, seedBlob, waitFor } from '../../harness/blobs.ts'

const logger = pino({ level: 'silent' })
const LISTEN = ['/ip4/127.0.0.1/tcp/0']

/** Fetches every piece with at most `inFlight` requests outstanding and reassembles the blob. */
async function fetchAll(session: ClientSession, inFlight: number): Promise<Uint8Array> {
  const pl = {
    size: session.size,
    pieceSize: session.pieceSize,
    count: pieceCount(session.size, session.pieceSize)
  }
  const out = new Uint8Array(pl.size)
  let next = 0
  let maxInFlight = 0
  let current = 0
  const worker = async () => {
    while (next < pl.count) {
      const index = next++
      current++
      maxInFlight = Math.max(maxInFlight, current)
      const data = await session.fetchPiece(index)
      current--
      out.set(data, pieceRange(index, pl.size, pl.pieceSize).start)
    }
  }
  await Promise.all(Array.from({ length: inFlight }, worker))
  assert.equal(maxInFlight, Math.min(inFlight, pl.count))
  return out
}

/** A raw handler for the piece protocol, reading frames from `message` events. */
function rawHandler(onMessage: (stream: Stream, msg: WireMessage) => void) {
  return (stream: Stream) => {
    const decoder = new FrameDecoder()
    stream.addEventListener('message', (evt) => {
      decoder.push(evt.data)
      for (const msg of decoder.frames()) onMessage(stream, msg)
    })
  }
}

function send(stream: Stream, msg: WireMessage): void {
  for (const part of encodeFrameParts(msg)) if (part.length > 0) stream.send(part)
}

describe('PieceExchange between real libp2p hosts on loopback', { timeout: 30_000 }, () => {
  let dir: string
  const swarmKey = parseSwarmKey(generateSwarmKey())
  const nodes: SwarmNode[] = []
  const exchanges: PieceExchange[] = []
  const stores: MemoryBlobStore[] = []
  // 3.5 pieces of the smallest piece size.
  const blob = makeBlob(3 * MIN_PIECE_SIZE + MIN_PIECE_SIZE / 2, MIN_PIECE_SIZE)
  // Large enough to fill yamux's window and exercise the server's wait for `drain`.
  const big = makeBlob(24 * MiB + 100 * KiB, MiB)
  const partial = makeBlob(2 * MIN_PIECE_SIZE, MIN_PIECE_SIZE)
  let seeder: SwarmNode
  let leecher: SwarmNode
  let rogue: SwarmNode
  let serverX: PieceExchange
  let clientX: PieceExchange

  function exchange(node: SwarmNode, store: MemoryBlobStore, init = {}): PieceExchange {
    const x = new PieceExchange({ node, store, logger }, init)
    exchanges.push(x)
    return x
  }

  function peerOf(node: SwarmNode) {
    return { peerId: node.peerId, addresses: node.addresses() }
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-pieces-'))
    for (const name of ['seeder', 'leecher', 'rogue']) {
      const privateKey = await loadOrCreatePrivateKey(join(dir, `${name}.key`))
      const node = new SwarmNode({ logger }, { listen: LISTEN, bootstrap: [], swarmKey, privateKey })
      await node.start()
      nodes.push(node)
      const store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 256 * MiB })
      await store.start()
      stores.push(store)
    }
    ;[seeder, leecher, rogue] = nodes as [SwarmNode, SwarmNode, SwarmNode]
    await seedBlob(stores[0]!, blob)
    await seedBlob(stores[0]!, big)
    await seedBlob(stores[0]!, partial, { upTo: 1 })
    serverX = exchange(seeder, stores[0]!)
    clientX = exchange(leecher, stores[1]!)
    await serverX.start()
    await serverX.start()
    await clientX.start()
  })

  after(async () => {
    await Promise.all(exchanges.map((x) => x.stop()))
    await Promise.all(nodes.map((n) => n.stop()))
    await rm(dir, { recursive: true, force: true })
  })

  it('serves a complete blob: piece list, full bitfield, pipelined pieces that reassemble', async () => {
    const session = await clientX.openSession(peerOf(seeder), blob.digest, { size: blob.data.length })
    assert.equal(session.peerId, seeder.peerId)
    assert.ok(session.complete)
    assert.equal(session.size, blob.data.length)
    assert.equal(session.pieceSize, MIN_PIECE_SIZE)
    assert.equal(session.held, 4)
    assert.deepEqual(
      [0, 1, 2, 3].map((i) => session.hashOf(i)),
      blob.pieceList.hashes
    )
    const data = await fetchAll(session, 4)
    assert.equal(digestOf(data), blob.digest)
    // The same piece twice at once, and a piece outside the blob.
    const [a, b] = await Promise.all([session.fetchPiece(3), session.fetchPiece(3)])
    assert.equal(sha256Hex(a), blob.pieceList.hashes[3])
    assert.deepEqual(a, b)
    await assert.rejects(session.fetchPiece(4), { code: 'RANGE_NOT_SATISFIABLE' })
    await session.close()
    await session.close()
    assert.equal(session.open, false)
    await assert.rejects(session.fetchPiece(0), { code: 'UPSTREAM_UNAVAILABLE' })
    assert.equal(clientX.stats.piecesFetched, 6)
    assert.equal(clientX.stats.bytesFetched, blob.data.length + 2 * (MIN_PIECE_SIZE / 2))
    await waitFor('the server to count its pieces', () => serverX.stats.piecesServed === 6)
    assert.equal(serverX.stats.bytesServed, clientX.stats.bytesFetched)
    assert.ok(serverX.stats.sessionsServed >= 1)
    await waitFor('the served session to end', () => serverX.activeUploads === 0)
  })

  it('streams a 24 MiB blob with 8 requests in flight, honouring backpressure', async () => {
    const session = await clientX.openSession(peerOf(seeder), big.digest)
    assert.equal(session.held, 25)
    const data = await fetchAll(session, 8)
    assert.equal(digestOf(data), big.digest)
    await session.close()
  })

  it('rejects an unknown or incomplete blob with BLOB_UNKNOWN, and a wrong size', async () => {
    const unknown = digestOf(new TextEncoder().encode('nobody has this'))
    await assert.rejects(clientX.openSession(peerOf(seeder), unknown), (err: Error) => {
      assert.ok(err instanceof BlobUnknownError)
      assert.equal((err as InstanceType<typeof BlobUnknownError>).code, 'BLOB_UNKNOWN')
      return true
    })
    await assert.rejects(clientX.openSession(peerOf(seeder), partial.digest), { code: 'BLOB_UNKNOWN' })
    await assert.rejects(clientX.openSession(peerOf(seeder), blob.digest, { size: 12345 }), {
      code: 'INVALID_PIECE_LIST'
    })
    await assert.rejects(clientX.openSession(peerOf(seeder), 'sha256:nope'), { code: 'INVALID_DIGEST' })
    await waitFor('the served sessions to end', () => serverX.activeUploads === 0)
  })

  it('serves a blob it is still fetching: geometry, HAVEs with hashes, news as they come', async () => {
    const { digest, pieceList: pl } = partial
    const events = new Set<(e: LiveBlobEvent) => void>()
    const held = new Map<number, string>([[0, pl.hashes[0]!]])
    const live: LiveBlob = {
      digest,
      size: pl.size,
      pieceSize: pl.pieceSize,
      hashOf: (i) => held.get(i),
      held: () => held.entries(),
      fetching: () => [1],
      onEvent: (fn) => {
        events.add(fn)
        return () => events.delete(fn)
      }
    }
    const emit = (e: LiveBlobEvent) => {
      for (const fn of events) fn(e)
    }
    const unpublish = serverX.publish(live)
    const interested: string[] = []
    const offInterest = serverX.onInterest((peer, d) => interested.push(`${peer} ${d}`))
    try {
      const session = await clientX.openSession(peerOf(seeder), digest, { size: pl.size })
      assert.equal(session.complete, false)
      assert.equal(session.size, pl.size)
      await waitFor(
        'the HAVE and the fetching claim',
        () => session.has(0) && session.fetchingSince(1) !== undefined
      )
      assert.equal(session.hashOf(0), pl.hashes[0])
      assert.equal(session.has(1), false)
      assert.deepEqual(interested, [`${leecher.peerId} ${digest}`])
      const before = serverX.stats.partialPiecesServed
      assert.equal(sha256Hex(await session.fetchPiece(0)), pl.hashes[0])
      assert.equal(serverX.stats.partialPiecesServed, before + 1)
      // Not held by the server yet: the client refuses to ask for it.
      await assert.rejects(session.fetchPiece(1), { code: 'BLOB_UNKNOWN' })
      // The piece lands on the server: its HAVE (with the hash) reaches the client.
      const { start, end } = pieceRange(1, pl.size, pl.pieceSize)
      await stores[0]!.putPiece(digest, 1, partial.data.subarray(start, end), {
        sha256: pl.hashes[1]!,
        source: 'registry'
      })
      held.set(1, pl.hashes[1]!)
      emit({ type: 'have', index: 1, sha256: pl.hashes[1]! })
      await waitFor('the HAVE of piece 1', () => session.has(1))
      assert.equal(session.fetchingSince(1), undefined)
      assert.equal(sha256Hex(await session.fetchPiece(1)), pl.hashes[1])
      // The server's transfer fails: the session ends.
      emit({ type: 'ended', complete: false })
      await waitFor('the session to close', () => !session.open)
    } finally {
      offInterest()
      unpublish()
    }
    await waitFor('the served session to end', () => serverX.activeUploads === 0)
  })

  it('peer exchange: a client hears of the other peers on the blob, and of those who come later', async () => {
    const node = new SwarmNode(
      { logger },
      {
        listen: LISTEN,
        bootstrap: [],
        swarmKey,
        privateKey: await loadOrCreatePrivateKey(join(dir, 'third.key'))
      }
    )
    await node.start()
    const store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 16 * MiB })
    await store.start()
    const thirdX = exchange(node, store)
    await thirdX.start()
    const heard = (session: ClientSession) => new Set(session.peersHeard().map((p) => p.peerId))
    let first: ClientSession | undefined
    let later: ClientSession | undefined
    try {
      first = await clientX.openSession(peerOf(seeder), blob.digest)
      later = await thirdX.openSession(peerOf(seeder), blob.digest)
      // The newcomer is told of the peer already there; that one hears of the newcomer.
      await waitFor('the newcomer to hear of the first peer', () => heard(later!).has(leecher.peerId))
      await waitFor('the first peer to hear of the newcomer', () => heard(first!).has(node.peerId))
      assert.ok(!heard(first).has(leecher.peerId), 'a peer was told of itself')
      assert.ok(!heard(later).has(seeder.peerId), 'the server listed itself')
    } finally {
      await first?.close()
      await later?.close()
      await thirdX.stop()
      await node.stop()
    }
  })

  it('a partial peer that changes the hash of a piece it announced is cut off', async () => {
    const prefix = '/liar'
    const pl = partial.pieceList
    await rogue.libp2p.handle(
      `${prefix}/pieces/1.0.0`,
      rawHandler((stream, msg) => {
        if (msg.type !== 'hello') return
        send(stream, { type: 'partial', size: pl.size, pieceSize: pl.pieceSize })
        send(stream, { type: 'have', index: 0, sha256: pl.hashes[0]! })
        send(stream, { type: 'have', index: 0, sha256: pl.hashes[1]! })
      })
    )
    const client = exchange(leecher, stores[1]!, { protocolPrefix: prefix })
    await client.start()
    const session = await client.openSession(peerOf(rogue), partial.digest)
    await waitFor('the session to close', () => !session.open)
    await assert.rejects(session.fetchPiece(0), { code: 'UPSTREAM_UNAVAILABLE' })
  })

  it('a piece with flipped bytes fails with DIGEST_MISMATCH and closes the session', async () => {
    const prefix = '/evil'
    await rogue.libp2p.handle(
      `${prefix}/pieces/1.0.0`,
      rawHandler((stream, msg) => {
        if (msg.type === 'hello') {
          send(stream, { type: 'piece-list', bytes: encodePieceList(blob.pieceList) })
          send(stream, { type: 'bitfield', bits: Bitfield.all(4).toBytes() })
        } else if (msg.type === 'request') {
          const { start, end } = pieceRange(msg.index, blob.data.length, MIN_PIECE_SIZE)
          const data = blob.data.slice(start, end)
          if (msg.index === 1) data[100] = (data[100] as number) ^ 0xff
          send(stream, { type: 'piece', index: msg.index, data })
        }
      })
    )
    const client = exchange(leecher, stores[1]!, { protocolPrefix: prefix })
    await client.start()
    const session = await client.openSession(peerOf(rogue), blob.digest)
    assert.equal(sha256Hex(await session.fetchPiece(0)), blob.pieceList.hashes[0])
    const bad = session.fetchPiece(1)
    const after = session.fetchPiece(2).catch((err: unknown) => err)
    await assert.rejects(bad, (err: Error) => {
      assert.ok(err instanceof DigestMismatchError)
      return true
    })
    assert.equal(session.open, false)
    // Piece 2 arrived after the bad one (dropped) or was pending: it fails either way.
    assert.equal(((await after) as { code: string }).code, 'UPSTREAM_UNAVAILABLE')
    await assert.rejects(session.fetchPiece(3), { code: 'UPSTREAM_UNAVAILABLE' })
    await waitFor('the session to leave the exchange', () => client.activeSessions === 0)
  })

  it('a silent peer fails openSession and a stalled one fetchPiece, within their deadlines', async () => {
    const prefix = '/silent'
    await rogue.libp2p.handle(
      `${prefix}/pieces/1.0.0`,
      rawHandler((stream, msg) => {
        // Answers hello for `blob` only, and never sends a piece.
        if (msg.type === 'hello' && msg.digest === blob.digest) {
          send(stream, { type: 'piece-list', bytes: encodePieceList(blob.pieceList) })
          send(stream, { type: 'bitfield', bits: Bitfield.all(4).toBytes() })
        }
      })
    )
    const client = exchange(leecher, stores[1]!, { protocolPrefix: prefix, openTimeoutMs: 600 })
    await client.start()
    let t0 = performance.now()
    await assert.rejects(client.openSession(peerOf(rogue), big.digest), { code: 'UPSTREAM_TIMEOUT' })
    const openMs = performance.now() - t0
    assert.ok(openMs >= 550 && openMs < 2000, `openSession failed after ${openMs} ms`)
    // A per-call deadline overrides the exchange's.
    t0 = performance.now()
    await assert.rejects(client.openSession(peerOf(rogue), big.digest, { timeoutMs: 200 }), {
      code: 'UPSTREAM_TIMEOUT'
    })
    assert.ok(performance.now() - t0 < 1000)

    const session = await client.openSession(peerOf(rogue), blob.digest)
    t0 = performance.now()
    await assert.rejects(session.fetchPiece(0, { timeoutMs: 300 }), { code: 'UPSTREAM_TIMEOUT' })
    const fetchMs = performance.now() - t0
    assert.ok(fetchMs >= 250 && fetchMs < 1500, `fetchPiece failed after ${fetchMs} ms`)
    // The session survives a timeout; an aborted request rejects with ABORTED.
    assert.equal(session.open, true)
    const controller = new AbortController()
    const aborted = session.fetchPiece(1, { signal: controller.signal })
    controller.abort()
    await assert.rejects(aborted, { code: 'ABORTED' })
    await assert.rejects(session.fetchPiece(1, { signal: AbortSignal.abort() }), { code: 'ABORTED' })
    // Closing with a request outstanding rejects it.
    const pending = session.fetchPiece(2)
    await session.close()
    await assert.rejects(pending, { code: 'ABORTED' })
    // An unreachable peer (nothing listens there) fails as UPSTREAM_UNAVAILABLE.
    const ghost = (await loadOrCreatePrivateKey(join(dir, 'ghost.key'))).publicKey.toString()
    await assert.rejects(
      clientX.openSession({ peerId: ghost, addresses: ['/ip4/127.0.0.1/tcp/1'] }, blob.digest),
      { code: 'UPSTREAM_UNAVAILABLE' }
    )
  })

  it('with one upload slot, a second concurrent session hears busy', async () => {
    const prefix = '/one-slot'
    const server = exchange(seeder, stores[0]!, {
      protocolPrefix: prefix,
      uploadSlots: 1,
      busyRetryAfterMs: 250
    })
    const client = exchange(leecher, stores[1]!, { protocolPrefix: prefix })
    await server.start()
    await client.start()
    const first = await client.openSession(peerOf(seeder), blob.digest)
    await assert.rejects(client.openSession(peerOf(seeder), blob.digest), (err: Error) => {
      assert.ok(err instanceof PeerBusyError)
      assert.equal(err.code, 'UPSTREAM_UNAVAILABLE')
      assert.equal(err.retryAfterMs, 250)
      return true
    })
    assert.equal(server.activeUploads, 1)
    // The first session still works; once it closes, the slot is free again.
    assert.equal(sha256Hex(await first.fetchPiece(2)), blob.pieceList.hashes[2])
    await first.close()
    await waitFor('the slot to free', () => server.activeUploads === 0)
    const second = await client.openSession(peerOf(seeder), blob.digest)
    assert.equal(sha256Hex(await second.fetchPiece(0)), blob.pieceList.hashes[0])
    await second.close()
  })

  it('with one concurrent upload, a piece asked while another is on its way hears PIECE_BUSY', async () => {
    const prefix = '/one-upload'
    // 64 KiB/s: a 64 KiB piece takes about a second to go out.
    const upload = new TokenBucket(64 * KiB, 1)
    const server = exchange(seeder, stores[0]!, { protocolPrefix: prefix, concurrentUploads: 1, upload })
    const a = exchange(leecher, stores[1]!, { protocolPrefix: prefix })
    const b = exchange(rogue, stores[2]!, { protocolPrefix: prefix })
    await Promise.all([server.start(), a.start(), b.start()])
    const sa = await a.openSession(peerOf(seeder), blob.digest)
    const sb = await b.openSession(peerOf(seeder), blob.digest)
    // The bucket lets a piece through and then runs a second in debt: piece 1 waits about a
    // second for it, holding the one upload.
    assert.equal(sha256Hex(await sa.fetchPiece(0)), blob.pieceList.hashes[0])
    const first = sa.fetchPiece(1)
    await sleep(200)
    await assert.rejects(sb.fetchPiece(2), (err: Error) => {
      assert.ok(err instanceof PieceBusyError, `${err.name}: ${err.message}`)
      assert.equal((err as { code?: string }).code, 'PIECE_BUSY')
      return true
    })
    assert.equal(sha256Hex(await first), blob.pieceList.hashes[1])
    // The upload is over: the same session is served now.
    assert.equal(sha256Hex(await sb.fetchPiece(2)), blob.pieceList.hashes[2])
    await Promise.all([sa.close(), sb.close()])
  })

  it('a client breaking the protocol has its stream reset and frees its slot', async () => {
    const target = multiaddr(seeder.addresses()[0]!)
    const garbage = [
      Uint8Array.of(2, 99, 0), // unknown message type
      encodeFrameParts({ type: 'request', index: 0 })[0]!, // request before hello
      Uint8Array.of(0xff, 0xff, 0xff, 0x7f) // a length prefix over every limit
    ]
    for (const bytes of garbage) {
      const stream = await rogue.libp2p.dialProtocol(target, serverX.protocol)
      const closed = new Promise<Error | undefined>((resolve) =>
        stream.addEventListener('close', (evt) => resolve(evt.error), { once: true })
      )
      stream.send(bytes)
      const err = await closed
      assert.ok(err !== undefined, 'the stream closed without an error')
      assert.equal(stream.status, 'reset')
    }
    await waitFor('the served sessions to end', () => serverX.activeUploads === 0)
  })

  it('stop() aborts open sessions, unregisters the protocol and leaves no open handles', async () => {
    const session = await clientX.openSession(peerOf(seeder), blob.digest)
    assert.equal(serverX.activeUploads, 1)
    await serverX.stop()
    await serverX.stop()
    await waitFor('the client to see the session end', () => !session.open)
    await assert.rejects(session.fetchPiece(0), { code: 'UPSTREAM_UNAVAILABLE' })
    assert.equal(serverX.activeUploads, 0)
    // No handler any more: the dial's protocol negotiation fails.
    await assert.rejects(clientX.openSession(peerOf(seeder), blob.digest), { code: 'UPSTREAM_UNAVAILABLE' })

    await Promise.all(exchanges.map((x) => x.stop()))
    assert.equal(clientX.activeSessions, 0)
    await Promise.all(nodes.map((n) => n.stop()))
    await sleep(50)
    const sockets = process.getActiveResourcesInfo().filter((r) => r.startsWith('TCP'))
    assert.deepEqual(sockets, [])
    // libp2p's address manager leaves a 1 s debounce timer behind after (un)handle: wait it out.
    await waitFor('every timer to end', () => !process.getActiveResourcesInfo().includes('Timeout'), 3000)
  })
})
