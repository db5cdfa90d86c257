/**
 * Benchmark: one scenario on both levels of the simulator, side by side. The protocol level
 * runs real agents, each in its own network namespace on links shaped by tc, against the real
 * registry; the model level runs the same scenario with `runSwarmModel`. Prints p50 and p99
 * completion over T_min, registry egress over F and upload balance for both, the ratio
 * model / protocol, and whether p50 and egress agree within 15 %; writes
 * test/bench/results/model-vs-protocol.json and the plots of both runs.
 *
 *   npm run bench:model-vs-protocol                      # simulations/scenarios/compare-10.json
 *   npm run bench:model-vs-protocol -- <scenario.json>   # another scenario
 *   npm run bench:model-vs-protocol -- --runs 3          # the protocol level 3 times, medians compared
 * The model level always runs with 5 seeds (the scenario's and the next four); its medians are
 * compared.
 *   npm run bench:model-vs-protocol -- --nodes 16        # the same scenario with another node count
 *   npm run bench:model-vs-protocol -- --keep --log-level debug   # keep the agents' and registry's logs
 *   npm run bench:model-vs-protocol -- --cleanup         # remove what interrupted runs left, and exit
 *
 * Needs root, iproute2 and docker-registry; run `npm run build` first (the npm script does).
 */
import '../../src/polyfill.ts'
import { readFile, writeFile } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { parseArgs } from 'node:util'
import { removeStaleRuns } from '../../src/sim/netns/cleanup.ts'
import { Iproute } from '../../src/sim/netns/iproute.ts'
import { writePlots } from '../../src/sim/plots.ts'
import { type ProtocolResult, runProtocolScenario } from '../../src/sim/protocol/runner.ts'
import { abortOnSignals } from '../../src/sim/protocol/signals.ts'
import { jainIndex, percentile } from '../../src/sim/report.ts'
import { loadScenario, parseScenario, scenarioToInit } from '../../src/sim/scenario.ts'
import { runSwarmModel } from '../../src/sim/swarm-model.ts'
import type { SwarmTimeline } from '../../src/sim/timeline.ts'

const DEFAULT_SCENARIO = 'simulations/scenarios/compare-10.json'
/** How far apart the two levels may be and still agree (the issue's bar). */
const AGREEMENT = 0.15
/** Seeds the model runs with (its medians are compared; the median-p50 run is plotted). */
const MODEL_SEEDS = 5
const OUT = new URL('./results/', import.meta.url)

const log = (line: string) => process.stdout.write(`${line}\n`)

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      cleanup: { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
      'log-level': { type: 'string' },
      nodes: { type: 'string' },
      runs: { type: 'string' }
    }
  })
  const iproute = new Iproute()
  const stale = await removeStaleRuns(iproute)
  if (stale.namespaces.length > 0 || stale.pids.length > 0) {
    log(
      `removed what interrupted runs left: ${stale.namespaces.length} namespaces, ${stale.pids.length} processes`
    )
  }
  if (values.cleanup) return

  const path = positionals[0] ?? DEFAULT_SCENARIO
  const loaded = await loadScenario(path)
  const json = JSON.parse(await readFile(path, 'utf8')) as { name: string; topology: { nodes: number } }
  const nodes = values.nodes === undefined ? undefined : Number(values.nodes)
  // Another node count: the same file with `topology.nodes` replaced (rates must be one for all).
  const scenario =
    nodes === undefined
      ? loaded
      : parseScenario(
          { ...json, name: `${json.name}-n${nodes}`, topology: { ...json.topology, nodes } },
          `${path} with ${nodes} nodes`
        )
  const init = scenarioToInit(scenario)
  log(
    `${scenario.name}: ${init.nodes} nodes, ${init.pieces} pieces of ${(init.imageBytes / init.pieces / 1024).toFixed(0)} KiB`
  )

  // The model is cheap: it runs with several seeds, and its medians stand against the agents'.
  log(`model, ${MODEL_SEEDS} seeds ...`)
  const seeded = Array.from({ length: MODEL_SEEDS }, (_, k) => {
    const run = runSwarmModel({ ...init, seed: init.seed + k })
    return { run, report: reportFigures(run, init.imageBytes) }
  })
  const { median: modelMid, figures: modelFigures } = medianOf(seeded)
  const model = modelMid.run
  const modelReport: LevelFigures = { ...reportFigures(model, init.imageBytes), ...modelFigures }
  for (const [k, d] of seeded.entries()) {
    log(
      `  seed ${init.seed + k}: p50 ${d.report.completionOverTMin.p50.toFixed(2)} T_min, p99 ${d.report.completionOverTMin.p99.toFixed(2)} T_min, egress ${d.report.registryEgressOverF.toFixed(2)} F`
    )
  }

  const runs = Math.max(1, Number(values.runs ?? 1))
  const done: { result: ProtocolResult; report: LevelFigures; load: ReturnType<CpuSampler['summary']> }[] = []
  const { signal, dispose } = abortOnSignals()
  try {
    for (let k = 0; k < runs; k++) {
      log(
        `protocol level${runs > 1 ? `, run ${k + 1} of ${runs}` : ''}: real agents in network namespaces ...`
      )
      const cpu = new CpuSampler()
      try {
        cpu.start()
        const result = await runProtocolScenario(scenario, {
          signal,
          onProgress: (line) => log(`  ${line}`),
          keepFiles: values.keep,
          ...(values['log-level'] && { agentConfig: { log: { level: values['log-level'] } } }),
          onAgentsReady: () => cpu.mark()
        })
        done.push({ result, report: reportFigures(result, result.shape.imageBytes), load: cpu.summary() })
      } finally {
        cpu.stop()
      }
    }
  } finally {
    dispose()
  }
  // The run whose p50 is the median stands for all in the plots and the upload figures; p50,
  // p99 and egress are the medians over the runs.
  const { median: mid, figures: protocolFigures } = medianOf(done)
  const { result: protocol, load } = mid
  const median = (f: (d: (typeof done)[number]) => number) => percentile(done.map(f), 0.5)
  const F = protocol.shape.imageBytes
  const protocolReport: LevelFigures = { ...reportFigures(protocol, F), ...protocolFigures }
  const bodiesOverF = median((d) => d.result.registryBlobBytes / F)
  const rows = table(modelReport, protocolReport, protocol, F, bodiesOverF)
  log('')
  if (runs > 1) {
    log(`${runs} protocol-level runs (the table gives their medians):`)
    for (const [k, d] of done.entries()) {
      log(
        `  run ${k + 1}: p50 ${d.report.completionOverTMin.p50.toFixed(2)} T_min, p99 ${d.report.completionOverTMin.p99.toFixed(2)} T_min, egress ${d.report.registryEgressOverF.toFixed(2)} F on the wire, ${(d.result.registryBlobBytes / F).toFixed(2)} F of blob bodies`
      )
    }
    log('')
  }
  for (const r of rows.lines) log(r)
  log('')
  const agentCpu = protocol.cpu.agents.reduce((a, b) => a + b, 0)
  const moved = protocol.downloaded.reduce((a, b) => a + b, 0)
  const cores = (x: number) => (x / protocol.cpu.pullSeconds).toFixed(2)
  log(
    `CPU while the nodes pulled: the machine ${load.mean.toFixed(0)} % busy (max ${load.max.toFixed(0)} %; every process, 100 % = all ${availableParallelism()} cores); ` +
      `the agents used ${cores(agentCpu)} cores, the registry ${cores(protocol.cpu.registry)}; ` +
      `${(agentCpu / (moved / 2 ** 30)).toFixed(1)} agent CPU seconds per GiB delivered`
  )
  if (protocol.shape.ignored.length > 0) {
    log(
      `scenario settings the agents have no setting for (the model's alone): ${protocol.shape.ignored.join(', ')}`
    )
  }

  const result = {
    benchmark: 'model-vs-protocol',
    command: 'npm run bench:model-vs-protocol',
    date: new Date().toISOString(),
    scenario: scenario.name,
    scenarioFile: path,
    nodes: scenario.topology.nodes,
    modelInit: init,
    imageBytes: F,
    tMinSeconds: protocol.tMin,
    agreement: rows.agreement,
    model: {
      seeds: seeded.map((d) => ({ report: d.report, completion: d.run.completion })),
      report: modelReport,
      completion: model.completion,
      uploaded: model.uploaded,
      registryEgress: model.registryEgress
    },
    protocol: {
      report: protocolReport,
      completion: protocol.completion,
      registryEgress: protocol.registryEgress,
      registryEgressPayload: protocol.registryEgressPayload,
      registryBlobBytes: protocol.registryBlobBytes,
      uploaded: protocol.uploaded,
      uploadedPayload: protocol.uploadedPayload,
      downloaded: protocol.downloaded,
      fromPeers: protocol.fromPeers,
      drops: protocol.drops,
      timeline: protocol.timeline,
      setupSeconds: protocol.setupSeconds,
      cpuSeconds: protocol.cpu,
      ignoredSettings: protocol.shape.ignored,
      runs: done.map((d) => ({
        report: d.report,
        registryBlobBytes: d.result.registryBlobBytes,
        completion: d.result.completion,
        cpuSeconds: d.result.cpu,
        cpuPercent: d.load
      }))
    },
    cpuPercent: load
  }
  const name = nodes === undefined ? 'model-vs-protocol' : `model-vs-protocol-n${nodes}`
  await writeFile(new URL(`${name}.json`, OUT), `${JSON.stringify(result, null, 2)}\n`)
  const modelTimeline = (model as { timeline?: SwarmTimeline }).timeline
  const plots = await writePlots(
    OUT.pathname,
    name,
    [
      {
        label: 'model',
        completion: model.completion,
        uploaded: model.uploaded,
        tMin: model.tMin,
        imageBytes: init.imageBytes,
        ...(modelTimeline && { timeline: modelTimeline })
      },
      {
        label: 'protocol (real agents, tc)',
        completion: protocol.completion,
        uploaded: protocol.uploaded,
        tMin: protocol.tMin,
        imageBytes: F,
        timeline: protocol.timeline
      }
    ],
    // Piece diversity needs the replica count of each piece, which the protocol level cannot see.
    { title: scenario.name, only: ['completion-cdf', 'completed', 'registry-egress', 'upload'] }
  )
  log(
    `wrote test/bench/results/${name}.json and ${plots.length} plots (${plots.map((p) => p.split('/').pop()).join(', ')})`
  )
}

/** One level's figures against the goals (those of `reportSwarm`). */
interface LevelFigures {
  tMin: number
  registryEgressOverF: number
  completionOverTMin: { p50: number; p99: number; max: number }
  uploadMaxOverMean: number
  uploadJain: number
}

/**
 * The figures of `reportSwarm` from what both levels return (the model's result carries more
 * than the protocol level can observe, so the report is made from the shared fields).
 */
function reportFigures(
  r: { completion: number[]; registryEgress: number; uploaded: number[]; tMin: number },
  imageBytes: number
): LevelFigures {
  const c = r.completion.map((t) => t / r.tMin)
  const mean = r.uploaded.reduce((a, b) => a + b, 0) / Math.max(1, r.uploaded.length)
  return {
    tMin: r.tMin,
    registryEgressOverF: r.registryEgress / imageBytes,
    completionOverTMin: { p50: percentile(c, 0.5), p99: percentile(c, 0.99), max: Math.max(...c) },
    uploadMaxOverMean: mean === 0 ? 1 : Math.max(...r.uploaded) / mean,
    uploadJain: jainIndex(r.uploaded)
  }
}

/** The side-by-side table and the agreement verdicts. */
function table(m: LevelFigures, p: LevelFigures, r: ProtocolResult, F: number, bodiesOverF: number) {
  const x = (v: number) => `${v.toFixed(2)} x`
  const ratio = (a: number, b: number) => a / b
  const within = (q: number) => Math.abs(q - 1) <= AGREEMENT
  const p50 = ratio(m.completionOverTMin.p50, p.completionOverTMin.p50)
  const egress = ratio(m.registryEgressOverF, p.registryEgressOverF)
  const egressPayload = ratio(m.registryEgressOverF, bodiesOverF)
  const row = (name: string, a: string, b: string, q?: number, verdict?: boolean) =>
    `| ${name} | ${a} | ${b} | ${q === undefined ? '' : q.toFixed(2)} | ${verdict === undefined ? '' : verdict ? 'yes' : 'NO'} |`
  const lines = [
    `T_min = ${r.tMin.toFixed(1)} s, F = ${(F / 2 ** 20).toFixed(1)} MiB`,
    '',
    '| measure | model | protocol | model / protocol | within 15 % |',
    '|---|---|---|---|---|',
    row('completion p50 / T_min', x(m.completionOverTMin.p50), x(p.completionOverTMin.p50), p50, within(p50)),
    row(
      'completion p99 / T_min',
      x(m.completionOverTMin.p99),
      x(p.completionOverTMin.p99),
      ratio(m.completionOverTMin.p99, p.completionOverTMin.p99)
    ),
    row(
      'registry egress / F (tc, wire bytes)',
      x(m.registryEgressOverF),
      x(p.registryEgressOverF),
      egress,
      within(egress)
    ),
    row(
      'registry egress / F (registry log, blob bodies)',
      x(m.registryEgressOverF),
      x(bodiesOverF),
      egressPayload,
      within(egressPayload)
    ),
    row(
      'upload max / mean',
      x(m.uploadMaxOverMean),
      x(p.uploadMaxOverMean),
      ratio(m.uploadMaxOverMean, p.uploadMaxOverMean)
    ),
    row(
      'upload Jain index',
      m.uploadJain.toFixed(3),
      p.uploadJain.toFixed(3),
      ratio(m.uploadJain, p.uploadJain)
    ),
    row(
      'completion min / max (s)',
      '',
      `${Math.min(...r.completion).toFixed(1)} / ${Math.max(...r.completion).toFixed(1)}`
    ),
    row('p50 completion (s)', '', percentile(r.completion, 0.5).toFixed(1))
  ]
  return {
    lines,
    agreement: {
      p50: { ratio: p50, within: within(p50) },
      egressWire: { ratio: egress, within: within(egress) },
      egressBlobBodies: { ratio: egressPayload, within: within(egressPayload) }
    }
  }
}

/** Busy share of all cores from /proc/stat, sampled every second; `mark()` starts the counted part. */
class CpuSampler {
  #timer: NodeJS.Timeout | undefined
  #last: { busy: number; total: number } | undefined
  #marked = false
  readonly #samples: number[] = []

  start(): void {
    this.#timer = setInterval(() => void this.#sample(), 1000)
  }

  mark(): void {
    this.#marked = true
    this.#samples.length = 0
  }

  stop(): void {
    clearInterval(this.#timer)
  }

  summary(): { mean: number; max: number; samples: number } {
    const s = this.#samples
    return {
      mean: s.reduce((a, b) => a + b, 0) / Math.max(1, s.length),
      max: Math.max(0, ...s),
      samples: s.length
    }
  }

  async #sample(): Promise<void> {
    const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0] ?? ''
    const f = line.trim().split(/\s+/).slice(1).map(Number)
    const idle = (f[3] ?? 0) + (f[4] ?? 0)
    const total = f.reduce((a, b) => a + b, 0)
    const now = { busy: total - idle, total }
    if (this.#last && this.#marked && now.total > this.#last.total) {
      this.#samples.push((100 * (now.busy - this.#last.busy)) / (now.total - this.#last.total))
    }
    this.#last = now
  }
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : err}\n`)
  process.exit(1)
})

/**
 * Of several runs of one level: the run whose p50 is the median (it stands for all in the plots
 * and the upload figures), and the medians of p50, p99, max and registry egress.
 */
function medianOf<T extends { report: LevelFigures }>(
  runs: readonly T[]
): { median: T; figures: Pick<LevelFigures, 'registryEgressOverF' | 'completionOverTMin'> } {
  const mid = (f: (d: T) => number) => percentile(runs.map(f), 0.5)
  const byP50 = [...runs].sort((a, b) => a.report.completionOverTMin.p50 - b.report.completionOverTMin.p50)
  return {
    median: byP50[Math.floor((byP50.length - 1) / 2)] as T,
    figures: {
      registryEgressOverF: mid((d) => d.report.registryEgressOverF),
      completionOverTMin: {
        p50: mid((d) => d.report.completionOverTMin.p50),
        p99: mid((d) => d.report.completionOverTMin.p99),
        max: mid((d) => d.report.completionOverTMin.max)
      }
    }
  }
}
