/**
 * The model against the theory on homogeneous links (the registry as fast as a node): for each
 * crowd size N and piece count M, the last node's completion against the optimal schedule's
 * T_min × (1 + log2 N / M), with the theory's own settings from `scenarios/theory-100.json`
 * (one upload and one download at a time, the uploader serving the rarest piece first, two
 * registry fetchers). Crowds of 1,000 and more have 16 peers a node, smaller ones a full mesh.
 *
 *   npm run bench:theory            # N = 16, 100, 1,000 (about five minutes)
 *   FULL=1 npm run bench:theory     # and N = 10,000 (M = 256 and 1,024: most of an hour)
 *
 * Prints a table and writes simulations/results/theory.json.
 */
import { writeFile } from 'node:fs/promises'
import { loadScenario, scenarioToInit } from '../src/sim/scenario.ts'
import { runSwarmModel } from '../src/sim/swarm-model.ts'

const cases: Array<[nodes: number, pieces: number]> = [
  [16, 256],
  [100, 256],
  [100, 1024],
  [1000, 256],
  [1000, 1024]
]
if (process.env.FULL === '1') cases.push([10000, 256], [10000, 1024])

const base = scenarioToInit(
  await loadScenario(new URL('./scenarios/theory-100.json', import.meta.url).pathname)
)
const pieceBytes = base.imageBytes / base.pieces
const rows: Array<Record<string, number>> = []
const log = (line: string) => process.stdout.write(`${line}\n`)
log(
  '| N | peers a node | M | last / theory | p50 / theory | tail after the registry (piece times) | log2 N | wall |'
)
log('|---:|---:|---:|---:|---:|---:|---:|---:|')
for (const [nodes, pieces] of cases) {
  const maxPeers = nodes >= 1000 ? 16 : undefined
  const init = {
    ...base,
    nodes,
    pieces,
    imageBytes: pieces * pieceBytes,
    ...(maxPeers !== undefined && { maxPeers })
  }
  const started = performance.now()
  const r = runSwarmModel(init)
  const wall = (performance.now() - started) / 1000
  const bound = r.tMin * (1 + Math.log2(nodes) / pieces)
  const sorted = [...r.completion].sort((a, b) => a - b)
  const last = sorted.at(-1) as number
  const p50 = sorted[Math.floor((sorted.length - 1) / 2)] as number
  // The registry sends its last piece at T_min at the earliest; what follows is the spread.
  const tail = (last - r.tMin) / (r.tMin / pieces)
  const row = {
    nodes,
    maxPeers: maxPeers ?? nodes - 1,
    pieces,
    last: last / bound,
    p50: p50 / bound,
    tail,
    wall
  }
  rows.push(row)
  log(
    `| ${nodes} | ${row.maxPeers} | ${pieces} | ${row.last.toFixed(3)}x | ${row.p50.toFixed(3)}x | ${tail.toFixed(0)} | ${Math.log2(nodes).toFixed(1)} | ${wall.toFixed(0)} s |`
  )
}
const out = new URL('./results/theory.json', import.meta.url)
await writeFile(
  out,
  `${JSON.stringify({ benchmark: 'theory', command: 'npm run bench:theory', rows }, null, 2)}\n`
)
log(`wrote ${out.pathname}`)
