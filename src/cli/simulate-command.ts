/**
 * `shoal simulate <scenario.json>...`: runs each scenario on the model simulator, prints its
 * goal table (DESIGN.md section 9) as it finishes and one summary table at the end, and writes
 * the result JSON and the plots of each into the output directory.
 */
import { goalTable, type SwarmReport } from '../sim/report.ts'
import { loadScenario, scenarioToInit } from '../sim/scenario.ts'
import { simulate } from '../sim/simulate.ts'

export interface SimulateOptions {
  out: string
  /** Progress lines go here (stderr by default). */
  progress?: (line: string) => void
  print?: (text: string) => void
}

/** Runs the scenarios in order; returns each one's report. */
export async function simulateCommand(paths: string[], o: SimulateOptions): Promise<SwarmReport[]> {
  const progress = o.progress ?? ((line: string) => process.stderr.write(`${line}\n`))
  const print = o.print ?? ((text: string) => process.stdout.write(text))
  const rows: Array<{ name: string; nodes: number; report: SwarmReport }> = []
  for (const path of paths) {
    const scenario = await loadScenario(path)
    const init = scenarioToInit(scenario)
    progress(`${scenario.name}: ${init.nodes} nodes, ${init.pieces} pieces`)
    const out = await simulate(scenario, o.out, (line) => progress(`  ${line}`))
    const report = out.result['report'] as SwarmReport
    rows.push({ name: scenario.name, nodes: init.nodes, report })
    print(`\n## ${scenario.name}\n\n${goalTable(report)}\n\n`)
    print(`wrote ${[out.jsonPath, ...out.plotPaths].join('\n      ')}\n`)
  }
  if (rows.length > 1) print(`\n## Summary\n\n${summaryTable(rows)}\n`)
  return rows.map((r) => r.report)
}

/** One line per scenario: egress, completion percentiles against T_min, upload balance. */
export function summaryTable(rows: Array<{ name: string; nodes: number; report: SwarmReport }>): string {
  const x = (v: number) => (Number.isFinite(v) ? `${v.toFixed(2)}x` : 'never')
  const lines = [
    '| scenario | N | T_min | registry egress / F | p50 / T_min | p99 / T_min | p99.9 / T_min | upload max/mean | Jain |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|'
  ]
  for (const { name, nodes, report: r } of rows) {
    const c = r.completionOverTMin
    lines.push(
      `| ${name} | ${nodes} | ${r.tMin.toFixed(1)} s | ${x(r.registryEgressOverF)} | ${x(c.p50)} | ${x(c.p99)} | ${x(c.p999)} | ${x(r.uploadMaxOverMean)} | ${r.uploadJain.toFixed(3)} |`
    )
  }
  return lines.join('\n')
}
