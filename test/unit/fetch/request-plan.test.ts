import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it } from 'node:test'
import type { PeerView, PickState } from '../../../src/fetch/piece-picker.ts'
import { assignRegistryPieces, planRequests, type RequestPlanInput } from '../../../src/fetch/request-plan.ts'

function peer(peerId: string, holds: number[]): PeerView {
  const set = new Set(holds)
  return { peerId, has: (i) => set.has(i), fetchingSince: () => undefined }
}

function state(count: number, over: Partial<PickState> = {}): PickState {
  return {
    missing: new Set([...Array(count).keys()]),
    inFlight: new Map(),
    priority: [],
    heldCount: 1,
    count,
    peers: [],
    now: 0,
    claimTtlMs: 15_000,
    impatient: false,
    registryStart: 0,
    random: () => 0,
    ...over
  }
}

function input(over: Partial<RequestPlanInput<PeerView>>): RequestPlanInput<PeerView> {
  return {
    state: state(8),
    sessions: [],
    peerLoad: () => 0,
    peerDepth: 2,
    maxPeerFlights: 8,
    registryLoad: 0,
    registryWindow: 0,
    starvingTakesAny: true,
    ...over
  }
}

describe('planRequests', () => {
  it('fills each peer up to its depth with distinct pieces it holds, then stops at the total', () => {
    const a = peer('a', [0, 1, 2, 3])
    const b = peer('b', [0, 1, 2, 3, 4, 5])
    const plan = planRequests(
      input({ state: state(8, { peers: [a, b] }), sessions: [a, b], maxPeerFlights: 3 })
    )
    assert.equal(plan.requests.length, 3)
    assert.deepEqual(
      plan.requests.map((r) => r.peer?.peerId),
      ['a', 'a', 'b']
    )
    assert.equal(new Set(plan.requests.map((r) => r.index)).size, 3)
    for (const r of plan.requests) assert.ok(r.peer?.has(r.index))
  })

  it('counts the requests to every peer against the total, when asked of one peer only', () => {
    // A pass for one peer (its offer changed) must not forget the requests in flight elsewhere.
    const a = peer('a', [0, 1, 2, 3])
    const one = input({ state: state(8, { peers: [a] }), sessions: [a], maxPeerFlights: 3 })
    assert.equal(planRequests({ ...one, peerFlights: 3 }).requests.length, 0)
    assert.equal(planRequests({ ...one, peerFlights: 2 }).requests.length, 1)
    assert.equal(planRequests(one).requests.length, 2, 'without a total, the peer depth bounds it')
  })

  it('reports the peers that hold nothing wanted as idle, busy or not', () => {
    const held = peer('held', [0])
    const busyEmpty = peer('busy-empty', [1])
    const useful = peer('useful', [2, 3])
    const missing = new Set([2, 3, 4, 5, 6, 7])
    const plan = planRequests(
      input({
        state: state(8, { missing, peers: [held, busyEmpty, useful] }),
        sessions: [held, busyEmpty, useful],
        capacity: (p) => (p === busyEmpty ? 0 : Number.POSITIVE_INFINITY)
      })
    )
    assert.deepEqual(
      plan.idle.map((p) => p.peerId),
      ['held', 'busy-empty']
    )
    assert.deepEqual(plan.blocked, [])
    assert.ok(plan.requests.every((r) => r.peer === useful))
  })

  it('reports a busy peer that holds a wanted piece, and asks the others', () => {
    const busy = peer('busy', [0, 1])
    const free = peer('free', [2])
    const plan = planRequests(
      input({
        state: state(8, { peers: [busy, free] }),
        sessions: [busy, free],
        capacity: (p) => (p === busy ? 0 : Number.POSITIVE_INFINITY)
      })
    )
    assert.deepEqual(plan.blocked, [busy])
    assert.deepEqual(
      plan.requests.map((r) => [r.peer?.peerId, r.index]),
      [['free', 2]]
    )
  })

  it('takes from the registry only owned pieces, unless starving and allowed to take any', () => {
    const owns = () => (i: number) => i % 2 === 0
    const only = planRequests(input({ registryWindow: 8, owns, starvingTakesAny: false }))
    assert.deepEqual(
      only.requests.map((r) => r.index),
      [0, 2, 4, 6]
    )
    assert.ok(only.requests.every((r) => r.peer === undefined))
    // No peer to ask: a starving node may take any piece.
    const any = planRequests(input({ registryWindow: 8, owns }))
    assert.equal(any.requests.length, 8)
    // With a request to a peer, it is not starving: owned pieces only.
    const a = peer('a', [7])
    const busy = planRequests(
      input({ state: state(8, { peers: [a] }), sessions: [a], registryWindow: 8, owns })
    )
    assert.deepEqual(
      busy.requests.map((r) => r.index),
      [7, 0, 2, 4, 6]
    )
  })
})

describe('planRequests and patience', () => {
  it('an impatient node waits while a peer is taking pieces from the registry, not after', () => {
    const claimer = (since: number): PeerView => ({
      peerId: 'a',
      has: () => false,
      fetchingSince: (i) => (i === 1 ? since : undefined)
    })
    const plan = (since: number) =>
      planRequests(
        input({
          state: state(4, { peers: [claimer(since)], impatient: true, now: 20_000 }),
          registryWindow: 4,
          owns: () => () => false,
          starvingTakesAny: false
        })
      ).requests.map((r) => r.index)
    // A fresh claim: the registry is busy, not stalled; this node owns nothing, so nothing.
    assert.deepEqual(plan(19_000), [])
    // The claim went stale: the swarm is stalled, and patience takes every unclaimed piece.
    assert.deepEqual(plan(1_000), [0, 1, 2, 3])
  })
})

describe('assignRegistryPieces', () => {
  const score = (m: string, i?: number) =>
    createHash('sha256')
      .update(`${m} ${i ?? 'blob'}`)
      .digest('hex')
      .split('')
      .reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7)

  it('gives every piece to one of the top members for the blob, the same for any member order', () => {
    const members = ['a', 'b', 'c', 'd', 'e', 'f']
    const owners = assignRegistryPieces(
      members,
      64,
      2,
      (m) => score(m),
      (m, i) => score(m, i)
    )
    const top = [...members].sort((x, y) => (score(y) > score(x) ? 1 : -1)).slice(0, 2)
    assert.deepEqual(new Set(owners), new Set(top))
    const shuffled = assignRegistryPieces(
      [...members].reverse(),
      64,
      2,
      (m) => score(m),
      (m, i) => score(m, i)
    )
    assert.deepEqual(shuffled, owners)
  })

  it('with every member a fetcher, splits the pieces among all of them', () => {
    const members = ['a', 'b', 'c', 'd']
    const owners = assignRegistryPieces(
      members,
      64,
      Number.POSITIVE_INFINITY,
      (m) => score(m),
      (m, i) => score(m, i)
    )
    assert.equal(new Set(owners).size, 4)
  })
})
