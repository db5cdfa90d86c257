import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { beforeEach, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { pino } from 'pino'
import { ShoalMetrics } from '../../../src/api/metrics.ts'
import { systemClock } from '../../../src/clock.ts'
import { accessKey } from '../../../src/content/access.ts'
import { digestOf, sha256Hex } from '../../../src/content/digest.ts'
import { pieceCount, pieceRange } from '../../../src/content/pieces.ts'
import {
  AbortedError,
  DigestMismatchError,
  PieceBusyError,
  UpstreamUnavailableError
} from '../../../src/errors.ts'
import { BlobFetcher } from '../../../src/fetch/blob-fetcher.ts'
import { ENDGAME_PIECES } from '../../../src/fetch/piece-picker.ts'
import type {
  AnnounceOptions,
  BlobGeometry,
  BlobPeers,
  JoinOptions,
  LiveBlob,
  PeerBlobSession,
  PeerEvent,
  PeerSource
} from '../../../src/interface/peers.ts'
import type { BlobAccess } from '../../../src/interface/store.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'
import { MemoryUpstream } from './memory-upstream.ts'

const logger = pino({ level: 'silent' })
const PIECE = 64 * 1024

/** A peer in memory holding some pieces of one blob; it may lie, corrupt or die. */
class MemoryPeer implements PeerBlobSession {
  readonly peerId: string
  readonly size: number
  readonly pieceSize = PIECE
  readonly #data: Uint8Array
  readonly #hashes = new Map<number, string>()
  readonly #fetching = new Map<number, number>()
  readonly #listeners = new Set<(e: PeerEvent) => void>()
  open = true
  served = 0
  /** Bytes served for a piece in place of the real ones; `announce` also makes their hash its HAVE. */
  forged = new Map<number, { bytes: Uint8Array; announce: boolean }>()
  /** Fail every request after this many pieces (a peer that goes away). */
  dieAfter = Number.POSITIVE_INFINITY
  /** Answer this many requests with PIECE_BUSY first (a peer uploading all it allows). */
  busyFor = 0
  busyAnswers = 0

  constructor(peerId: string, data: Uint8Array, pieces: Iterable<number>) {
    this.peerId = peerId
    this.#data = data
    this.size = data.length
    for (const i of pieces) this.#hashes.set(i, sha256Hex(this.#real(i)))
  }

  #real(i: number): Uint8Array {
    const r = pieceRange(i, this.size, PIECE)
    return this.#data.slice(r.start, r.end)
  }

  forge(i: number, announce: boolean): void {
    const bytes = new Uint8Array(randomBytes(this.#real(i).length))
    this.forged.set(i, { bytes, announce })
    if (announce) this.#hashes.set(i, sha256Hex(bytes))
  }

  get held(): number {
    return this.#hashes.size
  }

  has(i: number): boolean {
    return this.#hashes.has(i)
  }

  hashOf(i: number): string | undefined {
    return this.#hashes.get(i)
  }

  fetchingSince(i: number): number | undefined {
    return this.#fetching.get(i)
  }

  /** Announces a registry fetch of `i`, then its HAVE after `ms`. */
  async claim(i: number, ms: number): Promise<void> {
    this.#fetching.set(i, Date.now())
    this.#emit({ type: 'fetching', index: i })
    await sleep(ms)
    this.#fetching.delete(i)
    this.#hashes.set(i, sha256Hex(this.#real(i)))
    this.#emit({ type: 'have', index: i })
  }

  async fetchPiece(i: number): Promise<Uint8Array> {
    if (!this.open || this.served >= this.dieAfter) {
      this.close()
      throw new UpstreamUnavailableError(`${this.peerId} went away`)
    }
    if (this.busyAnswers < this.busyFor) {
      this.busyAnswers++
      throw new PieceBusyError(`${this.peerId} is uploading all it allows`)
    }
    this.served++
    await sleep(1)
    if (!this.open) throw new UpstreamUnavailableError(`${this.peerId} went away`)
    const bytes = this.forged.get(i)?.bytes ?? this.#real(i)
    if (sha256Hex(bytes) !== this.#hashes.get(i)) {
      this.close()
      throw new DigestMismatchError(`${this.peerId} sent a bad piece ${i}`)
    }
    return bytes
  }

  onEvent(fn: (e: PeerEvent) => void): () => void {
    this.#listeners.add(fn)
    return () => this.#listeners.delete(fn)
  }

  #emit(e: PeerEvent): void {
    for (const fn of this.#listeners) fn(e)
  }

  async close(): Promise<void> {
    if (!this.open) return
    this.open = false
    this.#emit({ type: 'closed' })
  }
}

/** A swarm in memory: the peers of each blob, bans, what was announced. */
class MemorySwarm implements PeerSource {
  readonly peers = new Map<string, MemoryPeer[]>()
  readonly announced: string[] = []
  readonly banned: { peerId: string; reason: string }[] = []
  readonly published: LiveBlob[] = []
  /** Every join and announce with its options (access key, privacy). */
  readonly joins: { digest: string; options: JoinOptions }[] = []
  readonly announces: { digest: string; options: AnnounceOptions }[] = []
  /** Called as a transfer publishes itself (before its first piece). */
  onPublish: ((blob: LiveBlob) => void) | undefined

  add(digest: string, peer: MemoryPeer): MemoryPeer {
    this.peers.set(digest, [...(this.peers.get(digest) ?? []), peer])
    return peer
  }

  join(digest: string, options: JoinOptions = {}): BlobPeers {
    this.joins.push({ digest, options })
    this.announce(digest)
    const listeners = new Set<() => void>()
    const live = () =>
      (this.peers.get(digest) ?? []).filter((p) => p.open && !this.banned.some((b) => b.peerId === p.peerId))
    for (const p of this.peers.get(digest) ?? []) {
      p.onEvent(() => {
        for (const fn of listeners) fn()
      })
    }
    return {
      localPeerId: 'self',
      ready: async (): Promise<BlobGeometry | undefined> => {
        const first = live()[0]
        return first ? { size: first.size, pieceSize: first.pieceSize } : undefined
      },
      sessions: live,
      onChange: (fn) => {
        listeners.add(fn)
        return () => listeners.delete(fn)
      },
      publish: (blob) => {
        this.published.push(blob)
        this.onPublish?.(blob)
      },
      ban: (peerId, reason) => {
        this.banned.push({ peerId, reason })
        for (const p of this.peers.get(digest) ?? []) if (p.peerId === peerId) void p.close()
      },
      leave: () => listeners.clear()
    }
  }

  announce(digest: string, options: AnnounceOptions = {}): void {
    this.announces.push({ digest, options })
    if (!this.announced.includes(digest)) this.announced.push(digest)
  }

  withdraw(): void {}
}

describe('BlobFetcher with a swarm', () => {
  let upstream: MemoryUpstream
  let swarm: MemorySwarm
  let store: MemoryBlobStore
  let fetcher: BlobFetcher
  let metrics: ShoalMetrics
  const at = { registry: 'memory.test', repository: 'r' }

  beforeEach(async () => {
    upstream = new MemoryUpstream()
    swarm = new MemorySwarm()
    store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 64 * 1024 * 1024 })
    await store.start()
    metrics = new ShoalMetrics()
    fetcher = new BlobFetcher(
      { store, upstreams: upstream, clock: systemClock, logger, metrics, peers: swarm },
      { pieceSize: PIECE, registryConcurrency: 4, registryStreams: 4, peerDepth: 2 }
    )
  })

  function blob(pieces: number): { data: Uint8Array; digest: string; all: number[] } {
    const data = new Uint8Array(randomBytes(pieces * PIECE - 7))
    const digest = upstream.addBlob(data)
    return { data, digest, all: [...Array(pieceCount(data.length, PIECE)).keys()] }
  }

  it('takes a blob from several peers at once, none from the seed, and advertises it', async () => {
    const { data, digest, all } = blob(12)
    const a = swarm.add(digest, new MemoryPeer('a', data, all))
    const b = swarm.add(digest, new MemoryPeer('b', data, all))
    const info = await fetcher.fetch({ digest, size: data.length, ...at })
    assert.equal(info.complete, true)
    assert.equal(upstream.requests.length, 0)
    assert.ok(a.served > 0 && b.served > 0, `pieces from a: ${a.served}, from b: ${b.served}`)
    // Every piece once, plus at most a few duplicates asked for at the tail (endgame).
    assert.ok(a.served + b.served >= 12 && a.served + b.served <= 12 + ENDGAME_PIECES)
    assert.deepEqual(swarm.announced, [digest])
    assert.ok((await store.pieces(digest)).every((p) => p.source === 'peer'))
    const peerBytes = (await metrics.bytesFetched.get()).values.find((v) => v.labels.source === 'peer')
    assert.equal(peerBytes?.value, data.length)
  })

  it('takes from the seed only the pieces no peer holds', async () => {
    const { data, digest } = blob(8)
    swarm.add(digest, new MemoryPeer('a', data, [0, 1, 2, 3]))
    await fetcher.fetch({ digest, size: data.length, ...at })
    assert.deepEqual(upstream.requests.map((r) => r.start / PIECE).sort(), [4, 5, 6, 7])
  })

  it('leaves to a peer the pieces it is fetching from the seed (a cold swarm splits the work)', async () => {
    const { data, digest } = blob(8)
    const a = swarm.add(digest, new MemoryPeer('a', data, []))
    // Peer a claims pieces 2, 3 and 5 and gets them a little later.
    const claims = Promise.all([a.claim(2, 30), a.claim(3, 40), a.claim(5, 60)])
    await fetcher.fetch({ digest, size: data.length, ...at })
    await claims
    const fromSeed = upstream.requests.map((r) => r.start / PIECE).sort()
    assert.deepEqual(fromSeed, [0, 1, 4, 6, 7])
    assert.equal(a.served, 3)
  })

  it('renews its claims on registry pieces that outlive the claim time (a slow registry)', async () => {
    const { data, digest } = blob(2)
    swarm.add(digest, new MemoryPeer('a', data, []))
    upstream.delayMs = 700
    const claims = new Map<number, number>()
    swarm.onPublish = (live) =>
      live.onEvent((e) => {
        if (e.type === 'fetching') claims.set(e.index, (claims.get(e.index) ?? 0) + 1)
      })
    const slow = new BlobFetcher(
      { store, upstreams: upstream, clock: systemClock, logger, metrics, peers: swarm },
      { pieceSize: PIECE, registryConcurrency: 4, registryStreams: 4, claimTtlMs: 300 }
    )
    await slow.fetch({ digest, size: data.length, ...at })
    // Announced at launch, then again every third of the claim time while the piece is on its way.
    assert.ok(Math.max(...claims.values()) >= 3, JSON.stringify([...claims]))
  })

  it('bans a peer that sends a piece failing its hash, and completes from the others', async () => {
    const { data, digest, all } = blob(10)
    const bad = swarm.add(digest, new MemoryPeer('bad', data, all))
    swarm.add(digest, new MemoryPeer('good', data, all))
    for (const i of all) bad.forge(i, false)
    const info = await fetcher.fetch({ digest, size: data.length, ...at })
    assert.equal(info.complete, true)
    assert.deepEqual(swarm.banned, [{ peerId: 'bad', reason: 'bad-piece' }])
    // Cut off at its first bad piece: at most the requests already in flight (2) were sent.
    assert.ok(bad.served <= 2, `the bad peer served ${bad.served} pieces`)
  })

  it('traces a forged piece to the peer that vouched for it, bans it, and completes without it', async () => {
    const { data, digest, all } = blob(6)
    const forger = swarm.add(digest, new MemoryPeer('forger', data, all))
    const honest = swarm.add(digest, new MemoryPeer('honest', data, all))
    // The forger announces the hash of its forged bytes: every piece passes its check, only the
    // whole blob cannot.
    for (const i of all) forger.forge(i, true)
    const info = await fetcher.fetch({ digest, size: data.length, ...at })
    assert.equal(info.complete, true)
    assert.equal(digestOf(await store.read(digest, { start: 0, end: data.length })), digest)
    assert.deepEqual(swarm.banned, [{ peerId: 'forger', reason: 'forged-piece' }])
    assert.ok(honest.served > 0)
    const failures = (await metrics.verifyFailures.get()).values.find((v) => v.labels.kind === 'blob')
    assert.equal(failures?.value, 1)
  })

  it('asks a peer that answered PIECE_BUSY again shortly, without counting it a fault', async () => {
    const { data, digest, all } = blob(6)
    const a = swarm.add(digest, new MemoryPeer('a', data, all))
    // More busy answers than the strikes a peer may cause: they must not count as faults.
    a.busyFor = 5
    const info = await fetcher.fetch({ digest, size: data.length, ...at })
    assert.equal(info.complete, true)
    assert.equal(a.busyAnswers, 5)
    assert.equal(a.served, 6)
    assert.equal(upstream.requests.length, 0)
    assert.deepEqual(swarm.banned, [])
  })

  it('finishes from the seed when its only peer goes away mid-blob', async () => {
    const { data, digest, all } = blob(9)
    const a = swarm.add(digest, new MemoryPeer('a', data, all))
    a.dieAfter = 3
    const info = await fetcher.fetch({ digest, size: data.length, ...at })
    assert.equal(info.complete, true)
    assert.ok(upstream.requests.length >= 6, `${upstream.requests.length} pieces from the seed`)
    assert.deepEqual(swarm.banned, [])
  })

  it('publishes the transfer so peers can fetch its pieces while it runs', async () => {
    const { data, digest } = blob(4)
    const seen: string[] = []
    swarm.onPublish = (blob) => blob.onEvent((e) => seen.push(e.type))
    await fetcher.fetch({ digest, size: data.length, ...at })
    const live = swarm.published[0]
    assert.ok(live, 'the transfer was published')
    assert.equal(seen.at(-1), 'ended')
    assert.ok(seen.includes('have'))
    assert.equal([...live.held()].length, 4)
    for (const [i, h] of live.held()) {
      const r = pieceRange(i, data.length, PIECE)
      assert.equal(h, sha256Hex(data.subarray(r.start, r.end)))
    }
  })

  it('a blob from a registry with credentials is private from before its first piece, with its key', async () => {
    upstream.credentialed = true
    const { data, digest } = blob(3)
    const key = accessKey(new TextEncoder().encode('manifest a'))
    let atPublish: Promise<BlobAccess | undefined> | undefined
    swarm.onPublish = (live) => {
      atPublish = store.access(live.digest)
    }
    await fetcher.fetch({ digest, size: data.length, ...at, accessKey: key })
    assert.deepEqual(await atPublish, { private: true, keys: [key] }, 'recorded before peers could ask')
    assert.deepEqual(swarm.joins, [{ digest, options: { size: data.length, accessKey: key, private: true } }])
    // Asked again through another manifest: the key is recorded and the blob advertised under it.
    const key2 = accessKey(new TextEncoder().encode('manifest b'))
    await fetcher.fetch({ digest, size: data.length, ...at, accessKey: key2 })
    assert.deepEqual(await store.access(digest), { private: true, keys: [key, key2] })
    assert.deepEqual(swarm.announces.at(-1), { digest, options: { private: true, keys: [key2] } })
    // Asked without a manifest: nothing to record, nothing to advertise, still private.
    const announced = swarm.announces.length
    await fetcher.fetch({ digest, size: data.length, ...at })
    assert.equal(swarm.announces.length, announced)
    assert.equal((await store.access(digest))?.private, true)
  })

  it('a blob from a registry without credentials stays public; its manifest key is still kept', async () => {
    const { data, digest } = blob(2)
    const key = accessKey(new TextEncoder().encode('manifest c'))
    await fetcher.fetch({ digest, size: data.length, ...at, accessKey: key })
    assert.deepEqual(await store.access(digest), { private: false, keys: [key] })
    assert.equal(swarm.joins[0]?.options.private, false)
    await fetcher.fetch({ digest, size: data.length, ...at, accessKey: key })
    assert.ok(!swarm.announces.some((a) => a.options.private), 'a public blob is advertised by digest')
  })

  it('an aborted fetch leaves the transfer to finish for others', async () => {
    const { data, digest } = blob(3)
    const controller = new AbortController()
    const p = fetcher.fetch({ digest, size: data.length, ...at }, { signal: controller.signal })
    controller.abort()
    await assert.rejects(p, (err: Error) => err instanceof AbortedError)
    const info = await fetcher.fetch({ digest, size: data.length, ...at })
    assert.equal(info.complete, true)
  })
})
