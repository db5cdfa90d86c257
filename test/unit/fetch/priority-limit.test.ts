import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { PriorityLimit } from '../../../src/fetch/priority-limit.ts'

const tick = () => new Promise((r) => setImmediate(r))

describe('PriorityLimit', () => {
  it('never runs more than the limit at once', async () => {
    const limit = new PriorityLimit(3)
    let running = 0
    let peak = 0
    await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        limit.run(i % 4, async () => {
          running++
          peak = Math.max(peak, running)
          await tick()
          running--
        })
      )
    )
    assert.equal(peak, 3)
    assert.equal(limit.active, 0)
    assert.equal(limit.pending, 0)
  })

  it('serves waiters lowest priority first, FIFO among equals', async () => {
    const limit = new PriorityLimit(1)
    const order: string[] = []
    let open!: () => void
    const gate = new Promise<void>((r) => {
      open = r
    })
    const first = limit.run(0, () => gate)
    const waiting = [
      limit.run(5, async () => void order.push('5a')),
      limit.run(1, async () => void order.push('1a')),
      limit.run(5, async () => void order.push('5b')),
      limit.run(1, async () => void order.push('1b')),
      limit.run(0, async () => void order.push('0'))
    ]
    await tick()
    assert.equal(limit.pending, 5)
    open()
    await Promise.all([first, ...waiting])
    assert.deepEqual(order, ['0', '1a', '1b', '5a', '5b'])
  })

  it('frees the slot when a task fails', async () => {
    const limit = new PriorityLimit(1)
    await assert.rejects(
      limit.run(0, async () => Promise.reject(new Error('boom'))),
      /boom/
    )
    assert.equal(await limit.run(0, async () => 7), 7)
    assert.throws(() => new PriorityLimit(0), RangeError)
  })
})
