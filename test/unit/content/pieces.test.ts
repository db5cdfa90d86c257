import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { KiB, MiB } from '../../../src/constants.ts'
import { pieceCount, SWARM_TARGET_PIECES, swarmPieceSize } from '../../../src/content/pieces.ts'

describe('swarmPieceSize', () => {
  it('cuts a blob into at most 64 pieces of a power-of-two size from 256 KiB to the cap', () => {
    assert.equal(swarmPieceSize(0, 4 * MiB), 256 * KiB)
    assert.equal(swarmPieceSize(3 * MiB, 4 * MiB), 256 * KiB)
    assert.equal(swarmPieceSize(34_620_879, 4 * MiB), MiB)
    assert.equal(swarmPieceSize(110 * 1e6, 4 * MiB), 2 * MiB)
    assert.equal(swarmPieceSize(64 * MiB, 4 * MiB), MiB)
    assert.equal(swarmPieceSize(64 * MiB + 1, 4 * MiB), 2 * MiB)
    for (const size of [1, 5e6, 34e6, 200e6, 256 * MiB]) {
      const p = swarmPieceSize(size, 4 * MiB)
      assert.ok(pieceCount(size, p) <= SWARM_TARGET_PIECES, `${size} bytes in pieces of ${p}`)
    }
  })

  it('never exceeds the configured size, which caps large blobs', () => {
    assert.equal(swarmPieceSize(10e9, 4 * MiB), 4 * MiB)
    assert.equal(swarmPieceSize(10e9, 128 * KiB), 128 * KiB)
    assert.equal(swarmPieceSize(1 * MiB, 64 * KiB), 64 * KiB)
  })
})
