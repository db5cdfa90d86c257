import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { pino } from 'pino'
import { systemClock } from '../../../src/clock.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'
import { rejectsWithCode, storeConformance, testBlob } from './conformance.ts'

const logger = pino({ level: 'silent' })

storeConformance('MemoryBlobStore', async (quotaBytes, clock) => {
  const store = new MemoryBlobStore({ clock, logger }, { quotaBytes })
  await store.start()
  return { store, cleanup: () => store.stop() }
})

describe('MemoryBlobStore', () => {
  it('throws STORE_CLOSED before start', async () => {
    const store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 1024 })
    await rejectsWithCode(() => store.list(), 'STORE_CLOSED')
    assert.throws(() => store.usage(), { code: 'STORE_CLOSED' })
  })

  it('keeps its contents across stop and start of the same instance', async () => {
    const store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 1024 * 1024 })
    await store.start()
    const blob = testBlob(0, 'restart')
    await store.begin(blob.digest, { size: 0, pieceSize: 64 * 1024 })
    await store.stop()
    await store.start()
    assert.equal((await store.stat(blob.digest))?.size, 0)
    await store.stop()
  })
})
