import '../../../src/polyfill.ts'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { multiaddr } from '@multiformats/multiaddr'
import { pino } from 'pino'
import { ShoalMetrics } from '../../../src/api/metrics.ts'
import { systemClock } from '../../../src/clock.ts'
import { MIN_PIECE_SIZE, MiB } from '../../../src/constants.ts'
import { accessKey, accessProof } from '../../../src/content/access.ts'
import { digestOf, sha256Hex } from '../../../src/content/digest.ts'
import type { LiveBlob } from '../../../src/interface/peers.ts'
import { loadOrCreatePrivateKey } from '../../../src/p2p/identity.ts'
import { type ClientSession, PieceExchange } from '../../../src/p2p/piece-exchange.ts'
import { generateSwarmKey, parseSwarmKey } from '../../../src/p2p/swarm-key.ts'
import { SwarmNode } from '../../../src/p2p/swarm-node.ts'
import { encodeFrame, FrameDecoder, type WireMessage } from '../../../src/p2p/wire.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'
import { makeBlob, seedBlob, type TestBlob, waitFor } from '../../harness/blobs.ts'

const logger = pino({ level: 'silent' })
const LISTEN = ['/ip4/127.0.0.1/tcp/0']

/** Manifest bytes that name `blobs` (only their bytes matter: the access key is derived from them). */
function manifestOf(...blobs: TestBlob[]): Uint8Array {
  return new TextEncoder().encode(
    JSON.stringify({
      schemaVersion: 2,
      layers: blobs.map((b) => ({ digest: b.digest, size: b.data.length }))
    })
  )
}

describe('private blobs between real libp2p hosts', { timeout: 60_000 }, () => {
  let dir: string
  const swarmKey = parseSwarmKey(generateSwarmKey())
  const nodes: SwarmNode[] = []
  const exchanges: PieceExchange[] = []
  const metrics = new ShoalMetrics()
  const serverStore = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 64 * MiB })
  // A private layer held whole, a private layer still being fetched, a public layer.
  const secret = makeBlob(2 * MIN_PIECE_SIZE + 1000)
  const fetching = makeBlob(3 * MIN_PIECE_SIZE)
  const open = makeBlob(MIN_PIECE_SIZE + 10)
  // The manifest the server pulled, and another one (another tag) naming the same layer.
  const manifest = manifestOf(secret, fetching, open)
  const otherManifest = manifestOf(secret)
  const key = accessKey(manifest)
  let server: SwarmNode
  let friend: SwarmNode
  let stranger: SwarmNode
  let serverX: PieceExchange
  let friendX: PieceExchange
  let strangerX: PieceExchange
  let unpublish: () => void

  const peerOf = (node: SwarmNode) => ({ peerId: node.peerId, addresses: node.addresses() })
  const denied = async (reason: string) =>
    (await metrics.peerAccessDenied.get()).values.find((v) => v.labels.reason === reason)?.value ?? 0

  /** Says hello with `proof` on a raw stream and collects every frame until the server closes. */
  async function rawHello(from: SwarmNode, digest: string, proof?: Uint8Array): Promise<WireMessage[]> {
    const stream = await from.libp2p.dialProtocol(multiaddr(server.addresses()[0]!), serverX.protocol)
    const decoder = new FrameDecoder()
    const got: WireMessage[] = []
    const ended = new Promise<void>((resolve) => {
      stream.addEventListener('message', (evt) => {
        decoder.push(evt.data)
        for (const m of decoder.frames()) got.push(m)
      })
      stream.addEventListener('remoteCloseWrite', () => resolve(), { once: true })
      stream.addEventListener('close', () => resolve(), { once: true })
    })
    stream.send(encodeFrame({ type: 'hello', digest, ...(proof && { proof }) }))
    await Promise.race([ended, sleep(3000)])
    await stream.close().catch(() => stream.abort(new Error('done')))
    return got
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-private-'))
    for (const name of ['server', 'friend', 'stranger']) {
      const privateKey = await loadOrCreatePrivateKey(join(dir, `${name}.key`))
      const node = new SwarmNode({ logger }, { listen: LISTEN, bootstrap: [], swarmKey, privateKey })
      await node.start()
      nodes.push(node)
    }
    ;[server, friend, stranger] = nodes as [SwarmNode, SwarmNode, SwarmNode]
    await serverStore.start()
    await seedBlob(serverStore, secret, { private: true })
    await serverStore.grantAccess(secret.digest, { key })
    await seedBlob(serverStore, fetching, { upTo: 1, private: true })
    await serverStore.grantAccess(fetching.digest, { key })
    await seedBlob(serverStore, open)
    serverX = new PieceExchange({ node: server, store: serverStore, logger, metrics })
    const store = () => new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 16 * MiB })
    friendX = new PieceExchange({ node: friend, store: store(), logger })
    strangerX = new PieceExchange({ node: stranger, store: store(), logger })
    exchanges.push(serverX, friendX, strangerX)
    for (const x of exchanges) await x.start()
    // The partial layer is a transfer in flight: one piece held, one being fetched.
    const pl = fetching.pieceList
    const live: LiveBlob = {
      digest: fetching.digest,
      size: pl.size,
      pieceSize: pl.pieceSize,
      hashOf: (i) => (i === 0 ? pl.hashes[0] : undefined),
      held: () => [[0, pl.hashes[0]!]],
      fetching: () => [1],
      onEvent: () => () => {}
    }
    unpublish = serverX.publish(live)
  })

  after(async () => {
    unpublish()
    await Promise.all(exchanges.map((x) => x.stop()))
    await Promise.all(nodes.map((n) => n.stop()))
    await rm(dir, { recursive: true, force: true })
  })

  it('serves a private blob to a peer whose hello proves it holds a manifest naming it', async () => {
    const session = await friendX.openSession(peerOf(server), secret.digest, { accessKey: key })
    assert.ok(session.complete)
    const pieces = await Promise.all([0, 1, 2].map((i) => session.fetchPiece(i)))
    assert.equal(digestOf(Buffer.concat(pieces)), secret.digest)
    await session.close()
  })

  it('refuses it, exactly as a blob it does not hold, to a peer without a valid proof', async () => {
    const unknown = digestOf(randomBytes(100))
    const refusals: [string, () => Promise<ClientSession>][] = [
      ['no proof', () => strangerX.openSession(peerOf(server), secret.digest)],
      [
        'a proof made from another manifest',
        () => strangerX.openSession(peerOf(server), secret.digest, { accessKey: accessKey(otherManifest) })
      ],
      [
        'a made-up key',
        () => strangerX.openSession(peerOf(server), secret.digest, { accessKey: randomBytes(32) })
      ]
    ]
    const before = { none: await denied('no-proof'), bad: await denied('bad-proof') }
    for (const [what, open] of refusals) {
      await assert.rejects(open, { code: 'BLOB_UNKNOWN' }, what)
    }
    // What the refused peer hears is byte for byte what a peer asking for an unknown blob hears.
    const refused = await rawHello(stranger, secret.digest)
    const missing = await rawHello(stranger, unknown)
    assert.deepEqual(refused, [{ type: 'reject', index: 0, code: 'BLOB_UNKNOWN' }])
    assert.deepEqual(missing, refused)
    assert.equal(await denied('no-proof'), before.none + 2)
    assert.equal(await denied('bad-proof'), before.bad + 2)
  })

  it('refuses proofs made for another blob, replayed by another peer, or bound to another server', async () => {
    const before = await denied('bad-proof')
    const cases: [string, Uint8Array][] = [
      ['for another blob', accessProof(key, open.digest, stranger.peerId, server.peerId)],
      [
        "the friend's proof, replayed by the stranger",
        accessProof(key, secret.digest, friend.peerId, server.peerId)
      ],
      ['bound to another server', accessProof(key, secret.digest, stranger.peerId, friend.peerId)]
    ]
    for (const [what, proof] of cases) {
      assert.deepEqual(
        await rawHello(stranger, secret.digest, proof),
        [{ type: 'reject', index: 0, code: 'BLOB_UNKNOWN' }],
        what
      )
    }
    assert.equal(await denied('bad-proof'), before + cases.length)
    // The same raw hello with a proof made right is served: the refusals above were the proofs.
    const good = await rawHello(
      stranger,
      secret.digest,
      accessProof(key, secret.digest, stranger.peerId, server.peerId)
    )
    assert.deepEqual(
      good.map((m) => m.type),
      ['piece-list', 'bitfield']
    )
  })

  it('a blob still being fetched: no geometry, HAVE or fetching claim reaches a peer without access', async () => {
    const refused = await rawHello(stranger, fetching.digest)
    assert.deepEqual(refused, [{ type: 'reject', index: 0, code: 'BLOB_UNKNOWN' }])
    await assert.rejects(strangerX.openSession(peerOf(server), fetching.digest), { code: 'BLOB_UNKNOWN' })
    const session = await friendX.openSession(peerOf(server), fetching.digest, { accessKey: key })
    assert.equal(session.complete, false)
    await waitFor('the HAVE and the claim', () => session.has(0) && session.fetchingSince(1) !== undefined)
    assert.equal(sha256Hex(await session.fetchPiece(0)), fetching.pieceList.hashes[0])
    await session.close()
  })

  it('serves a public blob to anyone, with or without a proof', async () => {
    for (const options of [{}, { accessKey: randomBytes(32) }, { accessKey: key }]) {
      const session = await strangerX.openSession(peerOf(server), open.digest, options)
      const pieces = await Promise.all([0, 1].map((i) => session.fetchPiece(i)))
      assert.equal(digestOf(Buffer.concat(pieces)), open.digest)
      await session.close()
    }
  })

  it('peer exchange on a private blob names only peers that were served it', async () => {
    const node = new SwarmNode(
      { logger },
      {
        listen: LISTEN,
        bootstrap: [],
        swarmKey,
        privateKey: await loadOrCreatePrivateKey(join(dir, 'late.key'))
      }
    )
    await node.start()
    nodes.push(node)
    const lateX = new PieceExchange({
      node,
      store: new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 16 * MiB }),
      logger
    })
    exchanges.push(lateX)
    await lateX.start()
    const first = await friendX.openSession(peerOf(server), secret.digest, { accessKey: key })
    await assert.rejects(strangerX.openSession(peerOf(server), secret.digest), { code: 'BLOB_UNKNOWN' })
    const late = await lateX.openSession(peerOf(server), secret.digest, { accessKey: key })
    await waitFor('the newcomer to hear of the friend', () =>
      late.peersHeard().some((p) => p.peerId === friend.peerId)
    )
    await waitFor('the friend to hear of the newcomer', () =>
      first.peersHeard().some((p) => p.peerId === node.peerId)
    )
    // A moment more for any stray peer exchange: the refused stranger is never named.
    await sleep(500)
    for (const s of [first, late]) {
      assert.ok(!s.peersHeard().some((p) => p.peerId === stranger.peerId), 'the stranger was named')
    }
    await first.close()
    await late.close()
  })
})
