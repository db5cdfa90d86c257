/**
 * Runs every shipped scenario on the model and prints a goal table for each and a summary:
 *   npm run bench:simulate            # all but the 1,000- and 10,000-node crowds
 *   FULL=1 npm run bench:simulate     # all of them (each 10,000-node crowd takes minutes)
 * Results and plots go to simulations/results/.
 */
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { simulateCommand } from '../src/cli/simulate-command.ts'

const dir = new URL('./scenarios/', import.meta.url).pathname
const big = new Set(['flash-crowd-1000.json', 'flash-crowd-10000.json', 'theory-10000.json'])
const files = (await readdir(dir))
  .filter((f) => f.endsWith('.json') && (process.env.FULL === '1' || !big.has(f)))
  .sort()
await simulateCommand(
  files.map((f) => join(dir, f)),
  { out: new URL('./results/', import.meta.url).pathname }
)
