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
  const rows: SummaryRow[] = []
  for (const path of paths) {
    const scenario = await loadScenario(path)
    const init = scenarioToInit(scenario)
    progress(`${scenario.name}: ${init.nodes} nodes, ${init.pieces} pieces`)
    const out = await simulate(scenario, o.out, (line) => progress(`  ${line}`))
    const report = out.result['report'] as SwarmReport
    rows.push({ name: scenario.name, nodes: init.nodes, pieces: init.pieces, report })
    print(`\n## ${scenario.name}\n\n${goalTable(report)}\n\n`)
    print(`wrote ${[out.jsonPath, ...out.plotPaths].join('\n      ')}\n`)
  }
  if (rows.length > 1) print(`\n## Summary\n\n${summaryTable(rows)}\n`)
  return rows.map((r) => r.report)
}

export interface SummaryRow {
  name: string
  nodes: number
  pieces: number
  report: SwarmReport
}

/**
 * One line per scenario: egress, completion percentiles against T_min, upload balance, and the
 * last completion against the theory's optimum on homogeneous links, T_min × (1 + log2 N / M).
 */
export function summaryTable(rows: readonly SummaryRow[]): string {
  const x = (v: number, digits = 2) => (Number.isFinite(v) ? `${v.toFixed(digits)}x` : 'never')
  const lines = [
    '| scenario | N | M | T_min | registry egress / F | p50 / T_min | p99 / T_min | p99.9 / T_min | last / theory | upload max/mean | Jain |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|'
  ]
  for (const { name, nodes, pieces, report: r } of rows) {
    const c = r.completionOverTMin
    const theory = c.max / (1 + Math.log2(nodes) / pieces)
    lines.push(
      `| ${name} | ${nodes} | ${pieces} | ${r.tMin.toFixed(1)} s | ${x(r.registryEgressOverF)} | ${x(c.p50)} | ${x(c.p99)} | ${x(c.p999)} | ${x(theory, 3)} | ${x(r.uploadMaxOverMean)} | ${r.uploadJain.toFixed(3)} |`
    )
  }
  return lines.join('\n')
}
