import assert from 'node:assert/strict'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { simulate } from '../../../simulations/run.ts'
import { simulateCommand } from '../../../src/cli/simulate-command.ts'
import { ScenarioInvalidError } from '../../../src/errors.ts'
import { loadScenario, parseScenario, scenarioToInit } from '../../../src/sim/scenario.ts'

const scenarios = 'simulations/scenarios'
const MiB = 1024 * 1024

describe('scenario files', () => {
  it('every shipped scenario validates, under its file name', async () => {
    const files = (await readdir(scenarios)).filter((f) => f.endsWith('.json'))
    // The scenarios the simulator ships (see simulations/README.md).
    for (const name of [
      'flash-crowd-10',
      'flash-crowd-100',
      'flash-crowd-1000',
      'flash-crowd-10000',
      'rolling-update',
      'heterogeneous-links',
      'churn-1',
      'churn-5',
      'churn-20',
      'registry-throttled',
      'registry-down',
      'malicious-peer',
      'theory-100',
      'theory-10000'
    ])
      assert.ok(files.includes(`${name}.json`), name)
    for (const f of files) {
      const s = await loadScenario(join(scenarios, f))
      assert.equal(`${s.name}.json`, f)
      const init = scenarioToInit(s)
      assert.ok(init.nodes > 0 && init.pieces > 0 && init.imageBytes > 0)
    }
  })

  it('turns sizes and seconds into the model init', () => {
    const s = parseScenario({
      name: 'tiny',
      seed: 3,
      topology: { nodes: 4, upload: '1MiB', download: [MiB, '2MiB', MiB, MiB], registryUpload: 512 * 1024 },
      image: { size: '8MiB', pieceSize: '1MiB' },
      shoal: { claimTtl: 15 }
    })
    assert.deepEqual(scenarioToInit(s), {
      nodes: 4,
      imageBytes: 8 * MiB,
      pieces: 8,
      upload: MiB,
      download: [MiB, 2 * MiB, MiB, MiB],
      registryUpload: 512 * 1024,
      seed: 3,
      claimTtlMs: 15_000
    })
  })

  it('names the path of each bad field', () => {
    assert.throws(
      () =>
        parseScenario(
          {
            name: 'bad',
            seed: 1,
            topology: { nodes: 3, upload: [MiB, 'fast', MiB], download: [MiB], registryUpload: MiB },
            image: { size: '8MiB', pieces: 8 },
            shoal: { peerDepth: 0 }
          },
          'bad.json'
        ),
      (err: unknown) => {
        assert.ok(err instanceof ScenarioInvalidError)
        assert.match(err.message, /^bad\.json is not a valid scenario/)
        assert.match(err.message, /topology\.upload\.1: "fast" is not a positive rate/)
        assert.match(err.message, /shoal\.peerDepth:/)
        return true
      }
    )
    assert.throws(
      () =>
        parseScenario({
          name: 'bad',
          seed: 1,
          topology: { nodes: 3, upload: MiB, download: [MiB], registryUpload: MiB },
          image: { size: '8MiB', pieces: 8 }
        }),
      /topology\.download: has 1 rates for 3 nodes/
    )
  })
})

describe('simulate', () => {
  it('runs a small scenario and writes a result with the goal figures and its plots', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-sim-'))
    try {
      const s = parseScenario({
        name: 'small',
        seed: 1,
        topology: { nodes: 6, upload: '1MiB', download: '1MiB', registryUpload: '1MiB' },
        image: { size: '8MiB', pieces: 8 }
      })
      const progress: string[] = []
      const out = await simulate(s, dir, (line) => progress.push(line))
      assert.ok(progress.at(-1)?.startsWith('6/6 nodes done'))
      const result = JSON.parse(await readFile(out.jsonPath, 'utf8'))
      assert.equal(result.scenario, 'small')
      assert.equal(result.completion.length, 6)
      assert.equal(result.uploaded.length, 6)
      const r = result.report
      assert.equal(r.tMin, 8)
      assert.ok(r.registryEgressOverF >= 1)
      assert.ok(r.completionOverTMin.p50 >= 1 - 1e-9)
      assert.ok(r.completionOverTMin.p99 >= r.completionOverTMin.p50)
      assert.ok(r.completionOverTMin.max >= r.completionOverTMin.p99)
      assert.ok(r.uploadMaxOverMean >= 1)
      assert.ok(r.uploadJain > 0 && r.uploadJain <= 1)
      assert.equal(out.plotPaths[0], join(dir, 'small-completion-cdf.svg'))
      assert.ok(out.plotPaths.includes(join(dir, 'small-upload.svg')))
      const svg = await readFile(out.plotPaths[0]!, 'utf8')
      assert.match(svg, /^<svg /)
      assert.match(svg, /small: completion time CDF, normalised by T_min/)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('scenario workloads and faults', () => {
  const base = {
    name: 'w',
    seed: 1,
    topology: { nodes: 10, upload: '1MiB', download: '1MiB', registryUpload: '1MiB', latency: 0.01 },
    image: { size: '8MiB', pieces: 8 }
  }

  it('turns waves, spread and latency into arrivals, a lookup delay and HAVE latency', () => {
    const waves = scenarioToInit(parseScenario({ ...base, workload: { waves: { count: 5, interval: 20 } } }))
    assert.deepEqual(waves.arrivals, [0, 0, 20, 20, 40, 40, 60, 60, 80, 80])
    assert.equal(waves.haveLatency, 0.01)
    // log2(10) rounds up to 4 hops, each a round trip.
    assert.equal(waves.lookupDelay, 0.08)
    const spread = scenarioToInit(parseScenario({ ...base, workload: { spread: 10 } }))
    assert.deepEqual(spread.arrivals?.slice(0, 3), [0, 1, 2])
  })

  it('passes faults through and refuses bad ones by path', () => {
    const init = scenarioToInit(
      parseScenario({ ...base, faults: { registryDownAfter: 'first-copy', malicious: 1 } })
    )
    assert.deepEqual(init.faults, { registryDownAfter: 'first-copy', malicious: 1 })
    assert.throws(
      () => parseScenario({ ...base, faults: { churnPerMinute: 3 } }),
      (e: Error) => e instanceof ScenarioInvalidError && /faults\.churnPerMinute/.test(e.message)
    )
    assert.throws(
      () => parseScenario({ ...base, faults: { registryDownAfter: 'later' } }),
      (e: Error) => e instanceof ScenarioInvalidError && /faults\.registryDownAfter/.test(e.message)
    )
  })
})

describe('simulateCommand', () => {
  it('prints a goal table per scenario and a summary line for each', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-simcmd-'))
    try {
      const scenario = (name: string, nodes: number) => ({
        name,
        seed: 1,
        topology: { nodes, upload: '1MiB', download: '4MiB', registryUpload: '1MiB' },
        image: { size: '8MiB', pieces: 8 }
      })
      const paths = [join(dir, 'a.json'), join(dir, 'b.json')]
      await writeFile(paths[0]!, JSON.stringify(scenario('small-a', 4)))
      await writeFile(paths[1]!, JSON.stringify(scenario('small-b', 6)))
      let text = ''
      const reports = await simulateCommand(paths, {
        out: join(dir, 'out'),
        progress: () => {},
        print: (t) => {
          text += t
        }
      })
      assert.equal(reports.length, 2)
      assert.match(text, /## small-a[\s\S]*## small-b[\s\S]*## Summary/)
      const row = text.match(/\| small-a \| 4 \| 8 \| 8\.0 s \| 1\.00x \|(?: [^|]+ \|){3} (\d\.\d{3})x \|/)
      assert.ok(row, text)
      // The last node against T_min x (1 + log2(4)/8).
      const last = reports[0]?.completionOverTMin.max as number
      assert.equal(row[1], (last / 1.25).toFixed(3))
      assert.match(text, /\| small-b \| 6 \|/)
      assert.ok((await readdir(join(dir, 'out'))).includes('small-b-completion-cdf.svg'))
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
