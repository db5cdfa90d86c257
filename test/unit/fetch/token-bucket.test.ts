import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { TokenBucket } from '../../../src/fetch/token-bucket.ts'

const flush = () => new Promise<void>((r) => setImmediate(r))

describe('TokenBucket', () => {
  it('lets a burst through at once, then holds the average rate', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'] })
    const bucket = new TokenBucket(1000, 1000, () => Date.now())
    const done: number[] = []
    for (let i = 0; i < 4; i++) void bucket.take(500).then(() => done.push(i))
    await flush()
    assert.deepEqual(done, [0, 1])
    t.mock.timers.tick(499)
    await flush()
    assert.deepEqual(done, [0, 1])
    t.mock.timers.tick(1)
    await flush()
    assert.deepEqual(done, [0, 1, 2])
    t.mock.timers.tick(500)
    await flush()
    assert.deepEqual(done, [0, 1, 2, 3])
  })

  it('serves an urgent take before the normal ones already waiting', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'] })
    const bucket = new TokenBucket(1000, 1000, () => Date.now())
    await bucket.take(1000)
    const order: string[] = []
    void bucket.take(500).then(() => order.push('normal 1'))
    void bucket.take(500).then(() => order.push('normal 2'))
    void bucket.take(500, undefined, { urgent: true }).then(() => order.push('urgent'))
    for (let ms = 0; ms < 1500; ms += 500) {
      t.mock.timers.tick(500)
      await flush()
    }
    assert.deepEqual(order, ['urgent', 'normal 1', 'normal 2'])
  })

  it('a take larger than the burst goes when the bucket is full and leaves it in debt', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'] })
    const bucket = new TokenBucket(1000, 1000, () => Date.now())
    let big = false
    let after = false
    void bucket.take(3000).then(() => {
      big = true
    })
    void bucket.take(1).then(() => {
      after = true
    })
    await flush()
    assert.ok(big)
    t.mock.timers.tick(2000)
    await flush()
    assert.ok(!after, 'the debt of 2000 bytes was not paid back first')
    t.mock.timers.tick(1)
    await flush()
    assert.ok(after)
  })

  it('an aborted take rejects with ABORTED and does not hold up the ones behind it', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'] })
    const bucket = new TokenBucket(1000, 1000, () => Date.now())
    await bucket.take(1000)
    const ac = new AbortController()
    const first = bucket.take(1000, ac.signal)
    let second = false
    void bucket.take(500).then(() => {
      second = true
    })
    ac.abort()
    await assert.rejects(first, { code: 'ABORTED' })
    t.mock.timers.tick(500)
    await flush()
    assert.ok(second)
    await assert.rejects(bucket.take(1, ac.signal), { code: 'ABORTED' })
  })

  it('takes a new rate at once, waiters included; without a rate every take goes', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'] })
    const bucket = new TokenBucket(1000, 1000, () => Date.now())
    await bucket.take(1000)
    let waited = false
    void bucket.take(1000).then(() => {
      waited = true
    })
    await flush()
    assert.ok(!waited)
    // Lifting the cap lets the waiter go without any time passing.
    bucket.setRate(undefined)
    await flush()
    assert.ok(waited)
    assert.equal(bucket.rate, undefined)
    await bucket.take(10_000_000)
    // A cap again: a burst of 100, then 100 bytes per second.
    bucket.setRate(100)
    await bucket.take(100)
    let slow = false
    void bucket.take(100).then(() => {
      slow = true
    })
    t.mock.timers.tick(999)
    await flush()
    assert.ok(!slow)
    t.mock.timers.tick(1)
    await flush()
    assert.ok(slow)
    assert.throws(() => bucket.setRate(0), RangeError)
  })
})
