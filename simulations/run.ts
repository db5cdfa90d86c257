/**
 * Runs a scenario file on the model simulator:
 *   npm run simulate -- simulations/scenarios/flash-crowd-32.json [--out simulations/results]
 * Prints the goal table of DESIGN.md section 9 and writes <out>/<name>.json (the figures, the
 * model's init, every node's completion time and upload, and the timeline and message counts
 * when the model records them) and one <out>/<name>-<plot>.svg per plot of src/sim/plots.ts.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import { ScenarioInvalidError } from '../src/errors.ts'
import { type PlotRun, writePlots } from '../src/sim/plots.ts'
import { goalTable, reportSwarm } from '../src/sim/report.ts'
import { loadScenario, type Scenario, scenarioToInit } from '../src/sim/scenario.ts'
import { runSwarmModel, type SwarmResult } from '../src/sim/swarm-model.ts'
import type { MessageCounts, SwarmTimeline } from '../src/sim/timeline.ts'

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
  const r: SwarmResult & { timeline?: SwarmTimeline; messages?: MessageCounts } = runSwarmModel({
    ...init,
    onNodeDone: (done, total, time) => {
      if (done % step !== 0 && done !== total) return
      const wall = ((performance.now() - started) / 1000).toFixed(1)
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
    ...(r.timeline && { timeline: r.timeline }),
    ...(r.messages && { messages: r.messages })
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

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { out: { type: 'string', default: 'simulations/results' } }
  })
  if (positionals.length === 0) {
    process.stderr.write('usage: npm run simulate -- <scenario.json>... [--out dir]\n')
    process.exitCode = 2
    return
  }
  for (const path of positionals) {
    const scenario = await loadScenario(path)
    const init = scenarioToInit(scenario)
    process.stderr.write(`${scenario.name}: ${init.nodes} nodes, ${init.pieces} pieces\n`)
    const out = await simulate(scenario, values.out, (line) => process.stderr.write(`  ${line}\n`))
    const report = out.result['report'] as Parameters<typeof goalTable>[0]
    process.stdout.write(`\n## ${scenario.name}\n\n${goalTable(report)}\n\n`)
    process.stdout.write(`wrote ${[out.jsonPath, ...out.plotPaths].join('\n      ')}\n`)
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err: unknown) => {
    if (err instanceof ScenarioInvalidError) process.stderr.write(`${err.message}\n`)
    else process.stderr.write(`${(err as Error).stack ?? String(err)}\n`)
    process.exitCode = 1
  })
}
