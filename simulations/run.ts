/**
 * Runs a scenario file on the model simulator:
 *   npm run simulate -- simulations/scenarios/flash-crowd-32.json [--out simulations/results]
 * Prints the goal table of DESIGN.md section 9 and writes <out>/<name>.json (the figures, the
 * model's init and every node's completion time and upload) and <out>/<name>.svg (the
 * completion-time CDF normalised by T_min).
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import { ScenarioInvalidError } from '../src/errors.ts'
import { goalTable, reportSwarm } from '../src/sim/report.ts'
import { loadScenario, type Scenario, scenarioToInit } from '../src/sim/scenario.ts'
import { runSwarmModel } from '../src/sim/swarm-model.ts'
import { cdfChartSvg } from '../test/bench/chart.ts'

/** Where a run's files went, and what it measured. */
export interface SimulationOutput {
  jsonPath: string
  svgPath: string
  result: Record<string, unknown>
}

/** Runs one scenario, writes its result JSON and CDF plot into `outDir`. */
export async function simulate(
  scenario: Scenario,
  outDir: string,
  onProgress?: (line: string) => void
): Promise<SimulationOutput> {
  const init = scenarioToInit(scenario)
  const started = performance.now()
  const step = Math.max(1, Math.ceil(init.nodes / 20))
  const r = runSwarmModel({
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
    uploaded: r.uploaded
  }
  await mkdir(outDir, { recursive: true })
  const jsonPath = join(outDir, `${scenario.name}.json`)
  const svgPath = join(outDir, `${scenario.name}.svg`)
  await writeFile(jsonPath, `${JSON.stringify(result, null, 2)}\n`)
  await writeFile(
    svgPath,
    cdfChartSvg({
      title: `${scenario.name}: completion time CDF (N=${init.nodes}, T_min=${r.tMin.toFixed(1)} s)`,
      unit: 'completion time / T_min',
      series: [{ label: scenario.name, values: r.completion.map((t) => t / r.tMin) }],
      markers: [
        { label: 'T_min', value: 1 },
        { label: 'p99 first bar (2.0)', value: 2 }
      ]
    })
  )
  return { jsonPath, svgPath, result }
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
    process.stdout.write(`wrote ${out.jsonPath} and ${out.svgPath}\n`)
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err: unknown) => {
    if (err instanceof ScenarioInvalidError) process.stderr.write(`${err.message}\n`)
    else process.stderr.write(`${(err as Error).stack ?? String(err)}\n`)
    process.exitCode = 1
  })
}
