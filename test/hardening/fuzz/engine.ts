/**
 * A coverage-guided fuzzer for the parsers that read what peers, registries, runtimes and
 * operators send: libFuzzer's loop (run an input, keep it when it reaches new coverage, mutate
 * the corpus) on V8's block coverage (`coverage.ts`), with no native addon. Jazzer.js 4, the
 * libFuzzer binding for Node, ships its addon only built against glibc 2.38 and libstdc++ 3.4.32,
 * newer than this platform's (Debian 12: 2.36 and 3.4.30), and no sources to rebuild it from.
 *
 * A finding is an input that makes the target throw anything but its parser's typed error, or
 * that takes longer than `slowMs` (a parser that can be made to spin is a denial of service).
 */
import { mulberry32 } from '../../../src/sim/random.ts'
import type { BlockCoverage } from './coverage.ts'
import { Mutator } from './mutate.ts'

/** A parser under fuzzing. */
export interface FuzzTarget {
  name: string
  /** Feeds one input to the parser (and checks what it returns, such as a round trip). */
  run(data: Buffer): void | Promise<void>
  /** True for an error malformed input may cause: the parser's typed error. */
  expected(err: unknown): boolean
  /** Inputs to start from: valid encodings of every shape the parser knows. */
  seeds: Buffer[]
  /** Words of the format (magic numbers, keywords) the mutator inserts. */
  dictionary?: Buffer[]
  /** Longest input tried. */
  maxLength: number
  /** URLs of the scripts whose coverage guides the search: the parser and what it calls. */
  covers: RegExp
}

export interface FuzzOptions {
  /** How long to run. */
  ms: number
  /** Seed of the mutations: the same seed and corpus give the same run. */
  seed: number
  /** An input slower than this is a finding (default 1 s). */
  slowMs?: number
  /** Stop after this many findings (default 5). */
  maxFindings?: number
  /** Stop after this many executions, seeds included (default: no limit). */
  maxExecutions?: number
  /** Ignore coverage (see `fuzz`). */
  blind?: boolean
}

export interface Finding {
  input: Buffer
  kind: 'error' | 'slow'
  /** The unexpected error, or how long the input took. */
  what: string
}

export interface FuzzResult {
  executions: number
  /** Inputs kept for reaching new coverage (the seeds included). */
  corpus: number
  /** Distinct coverage features reached. */
  features: number
  /** Batches that reached something new and were run again one input at a time. */
  replays: number
  findings: Finding[]
}

/**
 * Runs `target` for `options.ms`, starting from its seeds, guided by `coverage` (started before
 * the target's code was loaded; see BlockCoverage). `blind` ignores coverage: every input is a
 * mutation of a seed, for comparison.
 */
export async function fuzz(
  target: FuzzTarget,
  coverage: BlockCoverage,
  options: FuzzOptions
): Promise<FuzzResult> {
  const random = mulberry32(options.seed)
  const mutator = new Mutator(random, target.dictionary ?? [], target.maxLength)
  coverage.covers = options.blind ? /^$/ : target.covers
  let runMs = 0
  /** Features of single inputs: what decides which input joins the corpus. */
  const seen = new Set<number>()
  /**
   * Blocks reached by whole batches: what decides a replay. Their counts, summed over a batch,
   * would call for a replay of most batches, and each costs a take per input.
   */
  const batchSeen = new Set<number>()
  const corpus: Buffer[] = []
  const findings: Finding[] = []
  const found = new Set<string>()
  const slowMs = options.slowMs ?? 1000
  const maxFindings = options.maxFindings ?? 5
  const maxExecutions = options.maxExecutions ?? Number.POSITIVE_INFINITY
  let executions = 0
  let replays = 0

  const run = async (input: Buffer): Promise<void> => {
    const started = performance.now()
    try {
      await target.run(input)
    } catch (err) {
      if (!target.expected(err)) {
        // One finding per place that throws: the same bug hit again adds nothing.
        const where = origin(err)
        if (!found.has(where)) {
          found.add(where)
          findings.push({ input, kind: 'error', what: describe(err) })
        }
      }
    }
    const took = performance.now() - started
    runMs += took
    executions++
    if (took > slowMs) findings.push({ input, kind: 'slow', what: `took ${Math.round(took)} ms` })
  }
  let takeMs = 0
  let takes = 0
  const take = (): Set<number> => {
    const started = performance.now()
    const features = coverage.take()
    takeMs += performance.now() - started
    takes++
    return features
  }
  /** Runs one input alone and keeps it when it reached something new. */
  const single = async (input: Buffer, always = false): Promise<void> => {
    await run(input)
    if (addNew(take(), seen) || always) corpus.push(input)
  }

  coverage.take()
  for (const s of target.seeds.length > 0 ? target.seeds : [Buffer.alloc(0)]) {
    await single(s.length > target.maxLength ? s.subarray(0, target.maxLength) : s, corpus.length === 0)
  }
  const end = performance.now() + options.ms
  const going = () => performance.now() < end && findings.length < maxFindings && executions < maxExecutions
  // Taking coverage costs a millisecond or two, more than most parsers take for an input:
  // inputs run in batches that take about as long as a take, and only a batch that reached
  // something new is run again one by one.
  while (going()) {
    const batch = Math.max(1, Math.min(256, Math.round(takeMs / takes / (runMs / executions))))
    const inputs: Buffer[] = []
    for (let i = 0; i < batch && executions < maxExecutions; i++) {
      const base = corpus[mutator.below(corpus.length)] as Buffer
      const other = corpus[mutator.below(corpus.length)] as Buffer
      const input = mutator.mutate(base, other)
      inputs.push(input)
      await run(input)
    }
    if (!addNew(blocksOf(take()), batchSeen)) continue
    replays++
    for (const input of inputs) {
      if (!going()) break
      await single(input)
    }
  }
  return { executions, corpus: corpus.length, features: seen.size, replays, findings }
}

/** The blocks of a set of features, without their count buckets (see BlockCoverage). */
function blocksOf(features: Set<number>): Set<number> {
  const out = new Set<number>()
  for (const f of features) out.add(f - (f % 16))
  return out
}

/** Adds `features` to `into`; true when one of them was not there. */
function addNew(features: Set<number>, into: Set<number>): boolean {
  let novel = false
  for (const f of features) {
    if (!into.has(f)) {
      into.add(f)
      novel = true
    }
  }
  return novel
}
/** The error's class and code and the frame that threw it: what tells two bugs apart. */
function origin(err: unknown): string {
  if (!(err instanceof Error)) return `non-error ${typeof err}`
  const frame = err.stack?.split('\n').find((l) => l.trim().startsWith('at ')) ?? ''
  return `${err.name} ${String((err as { code?: unknown }).code)} ${frame.trim()}`
}

/** The error as a person reads it: class, code, message and the frame that threw it. */
function describe(err: unknown): string {
  if (!(err instanceof Error)) return `non-error thrown: ${String(err).slice(0, 300)}`
  const code = (err as { code?: unknown }).code
  const frame = err.stack?.split('\n').find((l) => l.trim().startsWith('at ')) ?? ''
  return `${err.name}${code === undefined ? '' : ` ${String(code)}`}: ${err.message.slice(0, 300)} ${frame.trim()}`
}
