import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { beforeEach, describe, it } from 'node:test'
import { pino } from 'pino'
import { ShoalMetrics } from '../../../src/api/metrics.ts'
import { systemClock } from '../../../src/clock.ts'
import { digestOf } from '../../../src/content/digest.ts'
import { buildPieceList, type PieceList, verifyPiece } from '../../../src/content/piece-list.ts'
import { pieceRange } from '../../../src/content/pieces.ts'
import { UpstreamUnavailableError } from '../../../src/errors.ts'
import { BlobFetcher } from '../../../src/fetch/blob-fetcher.ts'
import type { PeerBlobSession, PeerSource } from '../../../src/interface/peers.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'
import { MemoryUpstream } from './memory-upstream.ts'

const logger = pino({ level: 'silent' })
const PIECE = 64 * 1024

/** A swarm in memory: peers holding blobs, optionally lying or dying. */
class MemoryPeers implements PeerSource {
  readonly blobs = new Map<string, { data: Uint8Array; pieceList: PieceList }>()
  readonly announced: string[] = []
  opened = 0
  piecesServed = 0
  /** Replace a piece's bytes (a peer whose piece list lies about the blob). */
  forge?: (index: number, data: Uint8Array) => Uint8Array
  /** Throw after this many pieces (a peer that goes away). */
  dieAfter = Number.POSITIVE_INFINITY

  hold(data: Uint8Array, pieceList?: PieceList): string {
    const digest = digestOf(data)
    this.blobs.set(digest, { data, pieceList: pieceList ?? buildPieceList(digest, data, PIECE) })
    return digest
  }

  async open(digest: string): Promise<PeerBlobSession | undefined> {
    const b = this.blobs.get(digest)
    if (!b) return undefined
    this.opened++
    return {
      peerId: 'peer-1',
      pieceList: b.pieceList,
      fetchPiece: async (index) => {
        if (this.piecesServed >= this.dieAfter) throw new UpstreamUnavailableError('peer went away')
        this.piecesServed++
        const r = pieceRange(index, b.data.length, b.pieceList.pieceSize)
        const bytes = this.forge?.(index, b.data.slice(r.start, r.end)) ?? b.data.slice(r.start, r.end)
        verifyPiece(b.pieceList, index, bytes)
        return bytes
      },
      close: async () => {}
    }
  }

  announce(digest: string): void {
    this.announced.push(digest)
  }

  withdraw(): void {}
}

describe('BlobFetcher with peers', () => {
  let upstream: MemoryUpstream
  let peers: MemoryPeers
  let store: MemoryBlobStore
  let fetcher: BlobFetcher
  let metrics: ShoalMetrics
  const at = { registry: 'memory.test', repository: 'r' }

  beforeEach(async () => {
    upstream = new MemoryUpstream()
    peers = new MemoryPeers()
    store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 64 * 1024 * 1024 })
    await store.start()
    metrics = new ShoalMetrics()
    fetcher = new BlobFetcher(
      { store, upstreams: upstream, clock: systemClock, logger, metrics, peers },
      { pieceSize: PIECE, registryConcurrency: 4, registryStreams: 4 }
    )
  })

  it('takes a blob a peer holds from the peer, not the seed, and announces it', async () => {
    const data = randomBytes(5 * PIECE + 9)
    const digest = peers.hold(data)
    upstream.addBlob(data)
    const info = await fetcher.fetch({ digest, size: data.length, ...at })
    assert.equal(info.complete, true)
    assert.equal(upstream.requests.length, 0)
    assert.equal(peers.piecesServed, 6)
    assert.deepEqual(peers.announced, [digest])
    const pieces = await store.pieces(digest)
    assert.ok(pieces.every((p) => p.source === 'peer'))
    const peerBytes = (await metrics.bytesFetched.get()).values.find((v) => v.labels.source === 'peer')
    assert.equal(peerBytes?.value, data.length)
  })

  it('falls back to the seed when a piece list leads to a wrong blob, and keeps peers out of it', async () => {
    const data = randomBytes(4 * PIECE)
    const digest = digestOf(data)
    upstream.addBlob(data)
    // The peer's list describes other bytes under this digest: every piece matches the list,
    // only the whole-blob check can tell.
    const other = randomBytes(4 * PIECE)
    peers.blobs.set(digest, {
      data: other,
      pieceList: { ...buildPieceList(digestOf(other), other, PIECE), digest }
    })
    const info = await fetcher.fetch({ digest, size: data.length, ...at })
    assert.equal(info.complete, true)
    assert.equal(upstream.requests.length, 4)
    const pieces = await store.pieces(digest)
    assert.ok(pieces.every((p) => p.source === 'registry'))
    // A second fetch of the same blob after a delete does not ask the lying peer again.
    await store.delete(digest)
    await fetcher.fetch({ digest, size: data.length, ...at })
    assert.equal(peers.opened, 1)
  })

  it('falls back to the seed when the peer goes away mid-blob', async () => {
    const data = randomBytes(6 * PIECE)
    const digest = peers.hold(data)
    upstream.addBlob(data)
    peers.dieAfter = 2
    const info = await fetcher.fetch({ digest, size: data.length, ...at })
    assert.equal(info.complete, true)
    assert.ok(upstream.requests.length >= 4)
  })

  it('uses the seed when no peer holds the blob', async () => {
    const data = randomBytes(2 * PIECE)
    const digest = upstream.addBlob(data)
    await fetcher.fetch({ digest, size: data.length, ...at })
    assert.equal(upstream.requests.length, 2)
    assert.deepEqual(peers.announced, [digest])
  })
})
