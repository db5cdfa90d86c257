import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { pino } from 'pino'
import { digestOf, sha256Hex } from '../../../src/content/digest.ts'
import type { BlobStore } from '../../../src/interface/store.ts'
import { LevelBlobStore } from '../../../src/store/level-blob-store.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'

const logger = pino({ level: 'silent' })
const PIECE = 64 * 1024

async function put(store: BlobStore, fill: number): Promise<string> {
  const data = new Uint8Array(PIECE).fill(fill)
  const digest = digestOf(data)
  await store.begin(digest, { size: PIECE, pieceSize: PIECE })
  await store.putPiece(digest, 0, data, { sha256: sha256Hex(data), source: 'registry' })
  await store.complete(digest)
  return digest
}

// The swarm stops announcing a blob the store evicted: the store must say which.
for (const kind of ['memory', 'level'] as const) {
  describe(`${kind} store eviction hook`, () => {
    it('reports every blob evicted to make room, and only those', async () => {
      const evicted: string[] = []
      let t = 1
      const clock = { now: () => t++ }
      const dir = await mkdtemp(join(tmpdir(), 'sh-ev-'))
      const init = { quotaBytes: 2 * PIECE, onEvict: (d: string) => evicted.push(d) }
      const store: BlobStore =
        kind === 'memory'
          ? new MemoryBlobStore({ clock, logger }, init)
          : new LevelBlobStore({ clock, logger }, { ...init, root: dir })
      await store.start()
      try {
        const a = await put(store, 1)
        const b = await put(store, 2)
        assert.deepEqual(evicted, [])
        await store.touch(a)
        await put(store, 3)
        assert.deepEqual(evicted, [b])
        assert.equal(await store.stat(b), undefined)
      } finally {
        await store.stop()
        await rm(dir, { recursive: true, force: true })
      }
    })
  })
}
