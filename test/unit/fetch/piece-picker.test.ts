import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  ENDGAME_PIECES,
  type PeerView,
  type PickState,
  pickForPeer,
  pickForRegistry,
  wantsFrom
} from '../../../src/fetch/piece-picker.ts'

function peer(peerId: string, holds: number[], fetching: Record<number, number> = {}): PeerView {
  return { peerId, has: (i) => holds.includes(i), fetchingSince: (i) => fetching[i] }
}

function state(count: number, over: Partial<PickState> = {}): PickState {
  return {
    missing: new Set(Array.from({ length: count }, (_, i) => i)),
    inFlight: new Map(),
    priority: [],
    heldCount: 0,
    count,
    peers: [],
    now: 1_000_000,
    claimTtlMs: 15_000,
    impatient: false,
    registryStart: 0,
    random: () => 0,
    ...over
  }
}

describe('pickForRegistry', () => {
  it('skips pieces a peer holds or freshly claims, and takes the rest in order from the start', () => {
    const s = state(6, {
      registryStart: 2,
      peers: [peer('a', [2]), peer('b', [], { 3: 1_000_000 - 1000, 4: 1_000_000 - 60_000 })]
    })
    // 2 is held, 3 claimed a second ago; the claim on 4 is stale.
    assert.equal(pickForRegistry(s), 4)
  })

  it('takes only the pieces this node owns, unless the swarm has stalled', () => {
    const inFlight = new Map<number, string[]>()
    const s = state(6, { owns: (i) => i % 3 === 0, inFlight })
    assert.equal(pickForRegistry(s), 0)
    inFlight.set(0, ['registry'])
    assert.equal(pickForRegistry(s), 3)
    inFlight.set(3, ['registry'])
    assert.equal(pickForRegistry(s), undefined)
    s.impatient = true
    assert.equal(pickForRegistry(s), 1)
  })

  it('serves a range read first, whoever owns or holds the piece', () => {
    const s = state(6, { priority: [5], owns: () => false, peers: [peer('a', [5])] })
    assert.equal(pickForRegistry(s), 5)
  })
})

describe('pickForPeer', () => {
  it("walks the peer's offered list when it is shorter, and picks as from the missing pieces", () => {
    // Random states: with or without the list, the same pick and the same answer from wantsFrom.
    let seed = 7
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return seed / 2 ** 31
    }
    for (let k = 0; k < 200; k++) {
      const count = 16
      const holds = [...Array(count).keys()].filter(() => rnd() < 0.3)
      const others = [
        peer(
          'o1',
          [...Array(count).keys()].filter(() => rnd() < 0.5)
        )
      ]
      const missing = new Set([...Array(count).keys()].filter(() => rnd() < 0.7))
      const inFlight = new Map(
        [...missing].filter(() => rnd() < 0.2).map((i) => [i, ['x']] as [number, string[]])
      )
      const plain = peer('p', holds)
      const listed: PeerView = { ...plain, offeredList: [...holds].reverse() }
      const s = state(count, { missing, inFlight, heldCount: 1, peers: [plain, ...others] })
      assert.equal(wantsFrom(listed, s), wantsFrom(plain, s))
      assert.equal(pickForPeer(listed, { ...s, peers: [listed, ...others] }), pickForPeer(plain, s))
    }
  })

  it('asks a peer for the rarest piece it holds that nobody brings in', () => {
    const a = peer('a', [0, 1, 2])
    const s = state(4, { heldCount: 1, peers: [a, peer('b', [0, 1]), peer('c', [0])] })
    assert.equal(pickForPeer(a, s), 2)
    s.inFlight = new Map([[2, ['registry']]])
    assert.equal(pickForPeer(a, s), 1)
  })

  it('at the tail, asks a second source for a piece already in flight', () => {
    const a = peer('a', [3])
    const missing = new Set([3])
    assert.ok(missing.size <= ENDGAME_PIECES)
    const s = state(4, { missing, heldCount: 3, peers: [a], inFlight: new Map([[3, ['registry']]]) })
    assert.equal(pickForPeer(a, s), 3)
    s.inFlight = new Map([[3, ['registry', 'b']]])
    assert.equal(pickForPeer(a, s), undefined)
  })
})
