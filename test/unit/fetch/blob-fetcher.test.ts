import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { beforeEach, describe, it } from 'node:test'
import { pino } from 'pino'
import { ShoalMetrics } from '../../../src/api/metrics.ts'
import { systemClock } from '../../../src/clock.ts'
import { digestOf, sha256Hex } from '../../../src/content/digest.ts'
import { BlobFetcher } from '../../../src/fetch/blob-fetcher.ts'
import type { BlobProgress } from '../../../src/fetch/transfer.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'
import { MemoryUpstream, unavailable } from './memory-upstream.ts'

const PIECE = 64 * 1024
const logger = pino({ level: 'silent' })

async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = []
  for await (const c of it) parts.push(c)
  return Buffer.concat(parts)
}

describe('BlobFetcher', () => {
  let upstream: MemoryUpstream
  let store: MemoryBlobStore
  let metrics: ShoalMetrics
  let fetcher: BlobFetcher
  const at = { registry: 'memory.test', repository: 'r' }

  beforeEach(async () => {
    upstream = new MemoryUpstream()
    store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 64 * 1024 * 1024 })
    await store.start()
    metrics = new ShoalMetrics()
    fetcher = new BlobFetcher(
      { store, upstreams: upstream, clock: systemClock, logger, metrics },
      { pieceSize: PIECE, registryConcurrency: 4, registryStreams: 3 }
    )
  })

  it('brings a multi-piece blob in by parallel ranges, verified and complete', async () => {
    const bytes = randomBytes(10 * PIECE + 123)
    const digest = upstream.addBlob(bytes)
    const seen: BlobProgress[] = []
    const info = await fetcher.fetch({ digest, ...at }, { onProgress: (p) => seen.push(p) })
    assert.equal(info.complete, true)
    assert.equal(info.size, bytes.length)
    assert.deepEqual(await collect(store.stream(digest)), bytes)
    // one request per piece, each a Range, never more than the registry stream cap at once
    assert.equal(upstream.requests.length, 11)
    assert.ok(upstream.requests.every((r) => r.start >= 0))
    assert.ok(upstream.maxRunning <= 3, `maxRunning ${upstream.maxRunning}`)
    assert.equal(seen.at(-1)?.bytesHeld, bytes.length)
    assert.equal(seen.at(-1)?.fetched.registry, bytes.length)
    // each stored piece records the hash of its bytes and where they came from
    const pieces = await store.pieces(digest)
    assert.equal(pieces.length, 11)
    assert.equal(pieces[3]?.sha256, sha256Hex(bytes.subarray(3 * PIECE, 4 * PIECE)))
    assert.equal(pieces[3]?.source, 'registry')
    const fetched = (await metrics.bytesFetched.get()).values.find((v) => v.labels.source === 'registry')
    assert.equal(fetched?.value, bytes.length)
  })

  it('fetches a one-piece blob with a plain GET', async () => {
    const digest = upstream.addBlob(randomBytes(1000))
    await fetcher.fetch({ digest, ...at })
    assert.deepEqual(upstream.requests, [{ digest, start: -1 }])
  })

  it('handles an empty blob', async () => {
    const digest = upstream.addBlob(new Uint8Array(0))
    const info = await fetcher.fetch({ digest, size: 0, ...at })
    assert.equal(info.complete, true)
    assert.equal(upstream.requests.length, 0)
  })

  it('shares one transfer between concurrent callers (single-flight)', async () => {
    const bytes = randomBytes(6 * PIECE)
    const digest = upstream.addBlob(bytes)
    upstream.delayMs = 5
    const results = await Promise.all([1, 2, 3, 4].map(() => fetcher.fetch({ digest, ...at })))
    assert.ok(results.every((r) => r.complete))
    assert.equal(upstream.requests.length, 6)
    // and a later call is served from the store with no request at all
    await fetcher.fetch({ digest, ...at })
    assert.equal(upstream.requests.length, 6)
  })

  it('refuses a blob whose bytes do not match its digest and keeps nothing', async () => {
    const bytes = randomBytes(4 * PIECE)
    const digest = upstream.addBlob(bytes)
    upstream.tamper = (_d, start, data) => {
      if (start !== 2 * PIECE) return undefined
      const bad = Buffer.from(data)
      bad[10] = (bad[10] ?? 0) ^ 0xff
      return bad
    }
    await assert.rejects(fetcher.fetch({ digest, ...at }), { code: 'DIGEST_MISMATCH' })
    assert.equal(await store.stat(digest), undefined)
    const failures = (await metrics.verifyFailures.get()).values.reduce((n, v) => n + v.value, 0)
    assert.equal(failures, 1)
  })

  it('refuses a blob that is shorter than its descriptor says', async () => {
    const bytes = randomBytes(2 * PIECE)
    const digest = upstream.addBlob(bytes)
    await assert.rejects(fetcher.fetch({ digest, size: 3 * PIECE, ...at }), { code: 'SIZE_MISMATCH' })
  })

  it('a descriptor lying about the size does not block the blob for the true one', async () => {
    // Found by the hardening suite: the partial record of the lie outlived its failed fetch,
    // and every later request for the shared layer failed with SIZE_MISMATCH.
    for (const size of [1000, 3 * PIECE + 10]) {
      const bytes = randomBytes(size)
      const digest = upstream.addBlob(bytes)
      for (const lie of [size - 1, size + 1]) {
        await assert.rejects(fetcher.fetch({ digest, size: lie, ...at }), {
          code: /^(SIZE|DIGEST)_MISMATCH$/
        })
      }
      const info = await fetcher.fetch({ digest, size, ...at })
      assert.equal(info.complete, true)
      assert.deepEqual(await collect(store.stream(digest)), bytes)
    }
  })

  it('resumes a failed transfer from the pieces already held', async () => {
    const bytes = randomBytes(8 * PIECE)
    const digest = upstream.addBlob(bytes)
    upstream.tamper = (_d, start) => {
      if (start === 5 * PIECE) throw unavailable()
      return undefined
    }
    await assert.rejects(fetcher.fetch({ digest, ...at }), { code: 'UPSTREAM_UNAVAILABLE' })
    const held = (await store.pieces(digest)).map((p) => p.index)
    assert.ok(held.length > 0 && !held.includes(5))
    upstream.tamper = undefined
    upstream.requests.length = 0
    const info = await fetcher.fetch({ digest, ...at })
    assert.equal(info.complete, true)
    const again = upstream.requests.map((r) => r.start / PIECE).sort((a, b) => a - b)
    assert.deepEqual(
      again,
      [0, 1, 2, 3, 4, 5, 6, 7].filter((i) => !held.includes(i))
    )
    assert.deepEqual(await collect(store.stream(digest)), bytes)
  })

  it('fetches a requested range first and returns once its pieces are held', async () => {
    const bytes = randomBytes(40 * PIECE)
    const digest = upstream.addBlob(bytes)
    upstream.delayMs = 2
    const range = { start: 30 * PIECE + 10, end: 31 * PIECE + 10 }
    await fetcher.fetchRange({ digest, ...at }, range)
    const held = new Set((await store.pieces(digest)).map((p) => p.index))
    assert.ok(held.has(30) && held.has(31))
    assert.ok(held.size < 40, 'returned before the whole blob was in')
    assert.deepEqual(await store.read(digest, range), new Uint8Array(bytes.subarray(range.start, range.end)))
    const first = upstream.requests.findIndex((r) => r.start === 30 * PIECE)
    assert.ok(first < 8, `piece 30 was request #${first}`)
    await fetcher.fetch({ digest, ...at })
  })

  it('refuses a range outside the blob', async () => {
    const digest = upstream.addBlob(randomBytes(PIECE))
    await assert.rejects(fetcher.fetchRange({ digest, ...at }, { start: 0, end: PIECE + 1 }), {
      code: 'RANGE_NOT_SATISFIABLE'
    })
  })

  it('rejects malformed digests before any request', async () => {
    await assert.rejects(fetcher.fetch({ digest: 'sha256:xyz', ...at }), { code: 'INVALID_DIGEST' })
    await assert.rejects(
      fetcher.fetch({ digest: digestOf(new Uint8Array(1)).replace('sha256', 'md5'), ...at }),
      {
        code: 'INVALID_DIGEST'
      }
    )
    assert.equal(upstream.requests.length, 0)
  })
})
