/**
 * Runs a scenario on the model simulator and writes what it measured: <out>/<name>.json (the
 * figures, the model's init, every node's completion time and upload, the timeline and message
 * counts) and one <out>/<name>-<plot>.svg per plot of `plots.ts`. Used by `shoal simulate` and
 * `npm run simulate`.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { type PlotRun, writePlots } from './plots.ts'
import { reportSwarm } from './report.ts'
import { type Scenario, scenarioToInit } from './scenario.ts'
import { runSwarmModel } from './swarm-model.ts'

/** Where a run's files went, and what it measured. */
export interface SimulationOutput {
  jsonPath: string
  /** The plots, one SVG file each, completion-time CDF first. */
  plotPaths: string[]
  result: Record<string, unknown>
}

/** Runs one scenario, writes its result JSON and its plots into `outDir`. */
export async function simulate(
  scenario: Scenario,
  outDir: string,
  onProgress?: (line: string) => void
): Promise<SimulationOutput> {
  const init = scenarioToInit(scenario)
  const started = performance.now()
  const step = Math.max(1, Math.ceil(init.nodes / 20))
  let lastLine = started
  const r = runSwarmModel({
    ...init,
    // Before the first node completes a large crowd runs for minutes: show the pieces moving.
    onPieces: (delivered, total, time) => {
      if (performance.now() - lastLine < 10_000) return
      lastLine = performance.now()
      const wall = ((lastLine - started) / 1000).toFixed(1)
      const share = ((100 * delivered) / total).toFixed(1)
      onProgress?.(`${share} % of all pieces delivered at t=${time.toFixed(1)} s (virtual), ${wall} s wall`)
    },
    onNodeDone: (done, total, time) => {
      if (done % step !== 0 && done !== total) return
      lastLine = performance.now()
      const wall = ((lastLine - started) / 1000).toFixed(1)
      onProgress?.(`${done}/${total} nodes done at t=${time.toFixed(1)} s (virtual), ${wall} s wall`)
    }
  })
  const report = reportSwarm(r, init.imageBytes)
  const result = {
    scenario: scenario.name,
    init,
    report,
    registryEgress: r.registryEgress,
    flows: r.flows,
    completion: r.completion,
    uploaded: r.uploaded,
    departed: r.departed,
    corruptPieces: r.corruptPieces,
    endedAt: r.endedAt,
    timeline: r.timeline,
    messages: r.messages
  }
  await mkdir(outDir, { recursive: true })
  const jsonPath = join(outDir, `${scenario.name}.json`)
  await writeFile(jsonPath, `${JSON.stringify(result, null, 2)}\n`)
  const run: PlotRun = {
    label: 'model',
    completion: r.completion,
    uploaded: r.uploaded,
    tMin: r.tMin,
    imageBytes: init.imageBytes,
    timeline: r.timeline,
    messages: r.messages
  }
  const plotPaths = await writePlots(outDir, scenario.name, [run], { title: scenario.name })
  return { jsonPath, plotPaths, result }
}
