import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { lowerBound, runSwarmModel, type SwarmModelInit } from '../../../src/sim/swarm-model.ts'

const MiB = 1024 * 1024

/** A homogeneous flash crowd: uplinks and the registry at 1 MiB/s, downlinks at 4. */
function crowd(over: Partial<SwarmModelInit> = {}): SwarmModelInit {
  return {
    nodes: 24,
    imageBytes: 32 * MiB,
    pieces: 32,
    upload: MiB,
    download: 4 * MiB,
    registryUpload: MiB,
    seed: 1,
    ...over
  }
}

/** The settings that bring the model nearest the theory (see `theory-100.json`). */
const tuned: Partial<SwarmModelInit> = {
  concurrentUploads: 1,
  registryFetchers: 2,
  registryWindow: 1,
  starvingTakesAny: false
}

function max(xs: readonly number[]): number {
  return Math.max(...xs)
}

describe('runSwarmModel', () => {
  it('never beats the lower bound, and every node completes with every byte accounted for', () => {
    const init = crowd()
    const r = runSwarmModel(init)
    assert.equal(r.tMin, lowerBound(init))
    assert.equal(r.tMin, 32)
    for (const t of r.completion) assert.ok(Number.isFinite(t) && t >= r.tMin * (1 - 1e-9), `${t}`)
    const uploaded = r.uploaded.reduce((a, b) => a + b, 0)
    // Every node got F, from the registry or from peers; duplicates only add.
    assert.ok(r.registryEgress + uploaded >= init.nodes * init.imageBytes - 1)
    assert.equal(r.timeline.completed.at(-1), init.nodes)
    assert.equal(r.timeline.registryBytes.at(-1), r.registryEgress)
    assert.equal(r.messages.control.length, init.nodes)
  })

  it('comes within the measured factor of T_min x (1 + log2(N)/M), closer with decision 12', () => {
    // The issue asks for 5 %; the model is not there. Measured on this case: the settings from
    // before decision 12 (every node uploads to all who ask, every member fetches from the
    // registry, starving nodes take any piece) 2.4x the bound; the agent's defaults now 1.6x;
    // one upload at a time and two registry fetchers 1.3x.
    const init = crowd()
    const bound = lowerBound(init) * (1 + Math.log2(init.nodes) / init.pieces)
    const before = runSwarmModel({
      ...init,
      concurrentUploads: Number.POSITIVE_INFINITY,
      registryFetchers: Number.POSITIVE_INFINITY,
      starvingTakesAny: true
    })
    const defaults = runSwarmModel(init)
    const best = runSwarmModel({ ...init, ...tuned })
    const ratio = (r: { completion: number[] }) => max(r.completion) / bound
    assert.ok(ratio(best) >= 1 && ratio(best) < 1.35, `tuned: ${ratio(best)}`)
    assert.ok(ratio(defaults) < 1.75, `defaults: ${ratio(defaults)}`)
    assert.ok(ratio(before) > ratio(defaults) * 1.3, `before ${ratio(before)} vs defaults ${ratio(defaults)}`)
    for (const r of [defaults, best]) {
      assert.ok(Math.abs(r.registryEgress / init.imageBytes - 1) < 0.01, `egress ${r.registryEgress}`)
    }
  })

  it('gives the same result for the same seed, and another for another seed', () => {
    const a = runSwarmModel(crowd({ nodes: 12, seed: 7, maxPeers: 4 }))
    const b = runSwarmModel(crowd({ nodes: 12, seed: 7, maxPeers: 4 }))
    const c = runSwarmModel(crowd({ nodes: 12, seed: 8, maxPeers: 4 }))
    assert.deepEqual(a, b)
    assert.notDeepEqual(a.completion, c.completion)
  })

  it('finishes from peers alone when the registry goes down after the first copy', () => {
    const init = crowd({ ...tuned, faults: { registryDownAfter: 'first-copy' } })
    const r = runSwarmModel(init)
    for (const t of r.completion) assert.ok(Number.isFinite(t))
    // The registry sent each piece once and then nothing more.
    assert.ok(Math.abs(r.registryEgress / init.imageBytes - 1) < 0.01, `egress ${r.registryEgress}`)
  })

  it('leaves nodes unfinished, without looping, when the registry dies before every piece is out', () => {
    const r = runSwarmModel(crowd({ ...tuned, faults: { registryDownAfter: 5 } }))
    assert.ok(r.completion.every((t) => t === Number.POSITIVE_INFINITY))
    assert.ok(r.registryEgress <= 5 * MiB + 1)
  })

  it('catches every piece a malicious peer sends, and the honest nodes still complete', () => {
    const r = runSwarmModel(crowd({ faults: { malicious: 2 } }))
    assert.ok(r.corruptPieces > 0, 'the liars were asked')
    assert.equal(r.completion.length, 22)
    for (const t of r.completion) assert.ok(Number.isFinite(t))
  })

  it('replaces churned nodes, and the nodes that stay complete', () => {
    const r = runSwarmModel(crowd({ maxPeers: 6, faults: { churnPerMinute: 0.2 } }))
    assert.ok(r.departed > 0, 'some nodes left before completing')
    assert.equal(r.completion.length, 24)
    for (const t of r.completion) assert.ok(Number.isFinite(t))
  })

  it('starts each wave of a rolling update at its time', () => {
    const arrivals = Array.from({ length: 24 }, (_, i) => (i < 12 ? 0 : 100))
    const r = runSwarmModel(crowd({ arrivals }))
    // Completion counts from each node's arrival; the second wave finds the image in the swarm.
    const second = r.completion.slice(12)
    const first = r.completion.slice(0, 12)
    assert.ok(max(second) < Math.min(...first), `${max(second)} vs ${Math.min(...first)}`)
  })
})
