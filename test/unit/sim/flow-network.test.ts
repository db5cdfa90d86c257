import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { EventQueue } from '../../../src/sim/event-queue.ts'
import { FlowNetwork, type Link } from '../../../src/sim/flow-network.ts'
import { mulberry32 } from '../../../src/sim/random.ts'

function link(name: string, capacity: number): Link {
  return { name, capacity }
}

function close(actual: number, expected: number): void {
  assert.ok(Math.abs(actual - expected) < 1e-9, `${actual} != ${expected}`)
}

describe('FlowNetwork', () => {
  it('gives two flows sharing an uplink half each', () => {
    const net = new FlowNetwork<string>()
    const up = link('a.up', 100)
    const a = net.start([up, link('b.down', 1000)], 100, 'a-b')
    const b = net.start([up, link('c.down', 1000)], 100, 'a-c')
    assert.equal(a.rate, 50)
    assert.equal(b.rate, 50)
    close(net.nextCompletion(), 2)
    const done = net.advance(net.nextCompletion())
    assert.deepEqual(done.map((f) => f.tag).sort(), ['a-b', 'a-c'])
    assert.equal(net.flowCount, 0)
  })

  it('hands capacity a bottlenecked flow cannot use to the other flow (max-min)', () => {
    const net = new FlowNetwork<string>()
    const up = link('a.up', 100)
    // x is held to 20 by b's downlink, so y gets the 80 left on a's uplink.
    const x = net.start([up, link('b.down', 20)], 40, 'x')
    const y = net.start([up, link('c.down', 1000)], 160, 'y')
    assert.equal(x.rate, 20)
    assert.equal(y.rate, 80)
    close(net.nextCompletion(), 2)
    assert.deepEqual(
      net.advance(2).map((f) => f.tag),
      ['x', 'y']
    )
  })

  it('reshares when a flow ends: exact completion times', () => {
    const net = new FlowNetwork<string>()
    const up = link('a.up', 100)
    net.start([up, link('b.down', 1000)], 50, 'short')
    const long = net.start([up, link('c.down', 1000)], 150, 'long')
    // Both at 50 until t=1 (short done, long has 100 left), then long alone at 100: done at t=2.
    close(net.nextCompletion(), 1)
    assert.deepEqual(
      net.advance(1).map((f) => f.tag),
      ['short']
    )
    assert.equal(long.rate, 100)
    close(net.nextCompletion(), 2)
    assert.deepEqual(
      net.advance(net.nextCompletion()).map((f) => f.tag),
      ['long']
    )
  })

  it('solves the classic three-link example', () => {
    // Links L1 (cap 10) and L2 (cap 10); flow f0 crosses both, f1 only L1, f2 only L2.
    // Max-min: every flow gets 5.
    const net = new FlowNetwork<string>()
    const l1 = link('l1', 10)
    const l2 = link('l2', 10)
    const f0 = net.start([l1, l2], 5, 'f0')
    const f1 = net.start([l1], 5, 'f1')
    const f2 = net.start([l2, link('l3', 2)], 5, 'f2')
    // f2 is held to 2 by l3, so l2 has 8 for f0; l1 splits 10 between f0 and f1: 5 each.
    assert.equal(f2.rate, 2)
    assert.equal(f0.rate, 5)
    assert.equal(f1.rate, 5)
  })
})

describe('EventQueue', () => {
  it('runs events in time order, ties in scheduling order', () => {
    const q = new EventQueue()
    const seen: string[] = []
    const random = mulberry32(7)
    const times = Array.from({ length: 200 }, () => Math.floor(random() * 50))
    times.forEach((t, k) => {
      q.schedule(t, () => {
        seen.push(`${t}:${k}`)
      })
    })
    let last = -1
    while (q.size > 0) {
      q.pop()?.()
      assert.ok(q.now >= last)
      last = q.now
    }
    const expected = times.map((t, k) => ({ t, k })).sort((a, b) => a.t - b.t || a.k - b.k)
    assert.deepEqual(
      seen,
      expected.map(({ t, k }) => `${t}:${k}`)
    )
  })
})

describe('mulberry32', () => {
  it('repeats for a seed and differs across seeds', () => {
    const a = mulberry32(42)
    const b = mulberry32(42)
    const c = mulberry32(43)
    const xs = Array.from({ length: 5 }, () => a())
    assert.deepEqual(
      xs,
      Array.from({ length: 5 }, () => b())
    )
    assert.notDeepEqual(
      xs,
      Array.from({ length: 5 }, () => c())
    )
    for (const x of xs) assert.ok(x >= 0 && x < 1)
  })
})

describe('FlowNetwork local refill', () => {
  it('gives every flow the rate a full max-min refill gives, as flows come and go', () => {
    const random = mulberry32(3)
    const ups = Array.from({ length: 12 }, (_, i) => link(`u${i}`, 1 + Math.floor(random() * 4)))
    const downs = Array.from({ length: 12 }, (_, i) => link(`d${i}`, 1 + Math.floor(random() * 8)))
    const local = new FlowNetwork<number>()
    const exact = new FlowNetwork<number>({ localLimit: Number.POSITIVE_INFINITY })
    const pairs: Array<[ReturnType<typeof local.start>, ReturnType<typeof exact.start>]> = []
    let worst = 0
    for (let step = 0; step < 300; step++) {
      if (pairs.length > 0 && random() < 0.4) {
        const [a, b] = pairs.splice(Math.floor(random() * pairs.length), 1)[0]!
        local.cancel(a)
        exact.cancel(b)
      } else {
        const links = [ups[Math.floor(random() * 12)]!, downs[Math.floor(random() * 12)]!]
        pairs.push([local.start(links, 1e9, step), exact.start(links, 1e9, step)])
      }
      for (const [a, b] of pairs) worst = Math.max(worst, Math.abs(a.rate - b.rate) / b.rate)
    }
    assert.ok(worst < 0.01, `largest rate difference ${worst}`)
  })
})

describe('FlowNetwork.advance', () => {
  it('returns a flow that ends within rounding of the time it is advanced to', () => {
    const net = new FlowNetwork<string>()
    const f = net.start([link('u', 3)], 1, 'third')
    const end = net.nextCompletion()
    // Advanced to a hair before its end (as an event scheduled then would): it is done.
    const done = net.advance(end * (1 - 1e-14))
    assert.deepEqual(
      done.map((x) => x.tag),
      ['third']
    )
    assert.equal(f.live, false)
  })
})
