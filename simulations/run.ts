/**
 * Runs a scenario file on the model simulator:
 *   npm run simulate -- simulations/scenarios/flash-crowd-100.json [--out simulations/results]
 * Prints the goal table of DESIGN.md section 9 and writes <out>/<name>.json (the figures, the
 * model's init, every node's completion time and upload, and the timeline and message counts
 * when the model records them) and one <out>/<name>-<plot>.svg per plot of src/sim/plots.ts.
 */
import { parseArgs } from 'node:util'
import { simulateCommand } from '../src/cli/simulate-command.ts'
import { ScenarioInvalidError } from '../src/errors.ts'

export { type SimulationOutput, simulate } from '../src/sim/simulate.ts'

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
  await simulateCommand(positionals, { out: values.out })
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err: unknown) => {
    if (err instanceof ScenarioInvalidError) process.stderr.write(`${err.message}\n`)
    else process.stderr.write(`${(err as Error).stack ?? String(err)}\n`)
    process.exitCode = 1
  })
}
