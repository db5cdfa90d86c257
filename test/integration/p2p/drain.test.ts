import '../../../src/polyfill.ts'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { pino } from 'pino'
import { systemClock } from '../../../src/clock.ts'
import { MIN_PIECE_SIZE, MiB } from '../../../src/constants.ts'
import { sha256Hex } from '../../../src/content/digest.ts'
import { PeerDrainingError } from '../../../src/errors.ts'
import { loadOrCreatePrivateKey } from '../../../src/p2p/identity.ts'
import { PieceExchange } from '../../../src/p2p/piece-exchange.ts'
import { generateSwarmKey, parseSwarmKey } from '../../../src/p2p/swarm-key.ts'
import { SwarmNode } from '../../../src/p2p/swarm-node.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'
import { makeBlob, seedBlob, waitFor } from '../../harness/blobs.ts'

const logger = pino({ level: 'silent' })

// A draining node keeps serving the sessions it has and refuses new ones with PEER_DRAINING.
describe('PieceExchange drain between real libp2p hosts', { timeout: 30_000 }, () => {
  let dir: string
  const nodes: SwarmNode[] = []
  const exchanges: PieceExchange[] = []
  const blob = makeBlob(4 * MIN_PIECE_SIZE, MIN_PIECE_SIZE)
  let server: PieceExchange
  let client: PieceExchange
  let seeder: SwarmNode

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-drain-'))
    const swarmKey = parseSwarmKey(generateSwarmKey())
    for (const name of ['seeder', 'leecher']) {
      const privateKey = await loadOrCreatePrivateKey(join(dir, `${name}.key`))
      const node = new SwarmNode(
        { logger },
        { listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], swarmKey, privateKey }
      )
      await node.start()
      nodes.push(node)
      const store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 16 * MiB })
      await store.start()
      if (name === 'seeder') await seedBlob(store, blob)
      const x = new PieceExchange({ node, store, logger })
      await x.start()
      exchanges.push(x)
    }
    ;[server, client] = exchanges as [PieceExchange, PieceExchange]
    seeder = nodes[0] as SwarmNode
  })

  after(async () => {
    await Promise.all(exchanges.map((x) => x.stop()))
    await Promise.all(nodes.map((n) => n.stop()))
    await rm(dir, { recursive: true, force: true })
  })

  it('finishes the session in flight, refuses a new one, and resolves once the last one ends', async () => {
    const peer = { peerId: seeder.peerId, addresses: seeder.addresses() }
    const session = await client.openSession(peer, blob.digest)
    assert.equal(sha256Hex(await session.fetchPiece(0)), blob.pieceList.hashes[0])
    await waitFor('the server to list the upload', () => server.uploads().length === 1)

    // Bounded by an aborted signal, drain answers at once with the session still open.
    assert.equal(await server.drain({ signal: AbortSignal.abort() }), 1)
    assert.ok(server.draining)
    const drained = server.drain()

    // A new session is refused with its own code, which the client maps to its own class.
    await assert.rejects(client.openSession(peer, blob.digest), (err: unknown) => {
      assert.ok(err instanceof PeerDrainingError, String(err))
      assert.equal((err as { code: string }).code, 'PEER_DRAINING')
      return true
    })

    // The session opened before the drain is still served, piece after piece.
    for (let i = 1; i < 4; i++) {
      assert.equal(sha256Hex(await session.fetchPiece(i)), blob.pieceList.hashes[i])
    }
    const [upload] = server.uploads()
    assert.equal(upload?.piecesServed, 4)
    assert.equal(upload?.bytesServed, blob.data.length)
    let settled = false
    void drained.then(() => {
      settled = true
    })
    await new Promise((r) => setTimeout(r, 100))
    assert.equal(settled, false, 'drain waits while a session is open')
    await session.close()
    assert.equal(await drained, 0)
    assert.deepEqual(server.uploads(), [])
  })
})
