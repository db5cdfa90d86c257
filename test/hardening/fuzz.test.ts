/**
 * Coverage-guided fuzzing of every parser that reads untrusted input (fuzz/targets.ts), each in
 * a process of its own for `fuzzMs()` (3 s in the normal suite; `FUZZ_SECONDS` or
 * `HARDENING_SCALE` for longer). A target starts from its seeds and its regression corpus
 * (test/hardening/corpus/fuzz/<target>/: inputs that once broke a parser, each run before any
 * mutation). An input that throws anything but the parser's typed error, runs for over a second
 * or kills the process fails the test; it is written to `FUZZ_FINDINGS` (default
 * <tmp>/shoal-fuzz-findings), to be fixed and added to the corpus. `FUZZ_SEED` repeats a run.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { TARGETS } from './fuzz/targets.ts'
import { fuzzMs } from './scale.ts'
import { tally } from './tally.ts'

const RUNNER = fileURLToPath(new URL('./fuzz/run-target.ts', import.meta.url))
const CORPUS = fileURLToPath(new URL('./corpus/fuzz/', import.meta.url))
const FINDINGS = process.env.FUZZ_FINDINGS ?? join(tmpdir(), 'shoal-fuzz-findings')

interface RunResult {
  executions: number
  corpus: number
  seeds: number
  features: number
  findings: { input: string; kind: 'error' | 'slow'; what: string }[]
}

/** The regression inputs of a target. */
function regressions(name: string): Buffer[] {
  let files: string[]
  try {
    files = readdirSync(join(CORPUS, name)).sort()
  } catch {
    return []
  }
  return files.map((f) => readFileSync(join(CORPUS, name, f)))
}

/** Runs a target in its own process; a process that dies is a finding too. */
function runTarget(request: Record<string, unknown>): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', '--max-old-space-size=1024', RUNNER, JSON.stringify(request)],
      { stdio: ['ignore', 'pipe', 'pipe'] }
    )
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => {
      out += d
    })
    child.stderr.on('data', (d) => {
      err += d
    })
    child.on('error', reject)
    child.on('close', (code, signal) => {
      const line = out.trim().split('\n').at(-1) ?? ''
      if (code === 0 && line.startsWith('{')) {
        resolve(JSON.parse(line) as RunResult)
        return
      }
      resolve({
        executions: 0,
        corpus: 0,
        seeds: 0,
        features: 0,
        findings: [
          {
            input: '',
            kind: 'error',
            what: `the process died (${signal ?? `exit ${code}`}): ${err.slice(-2000)}`
          }
        ]
      })
    })
  })
}

describe('coverage-guided fuzzing of the parsers', () => {
  for (const name of Object.keys(TARGETS)) {
    it(`${name}: no input throws anything but the typed error, hangs or kills the process`, async (t) => {
      const seed = Number(process.env.FUZZ_SEED ?? randomBytes(4).readUInt32BE())
      const corpus = regressions(name)
      const r = await runTarget({
        target: name,
        ms: fuzzMs(),
        seed,
        seeds: corpus.map((b) => b.toString('base64'))
      })
      tally('fuzz executions', r.executions, import.meta.url)
      t.diagnostic(
        `${name}: seed ${seed}, ${r.executions} executions, ${r.features} coverage features, ` +
          `corpus ${r.seeds} -> ${r.corpus}`
      )
      if (r.findings.length > 0) {
        tally('unexpected crashes', r.findings.length, import.meta.url)
        mkdirSync(join(FINDINGS, name), { recursive: true })
        for (const f of r.findings) {
          const input = Buffer.from(f.input, 'base64')
          const file = join(
            FINDINGS,
            name,
            `${createHash('sha256').update(input).digest('hex').slice(0, 16)}.bin`
          )
          writeFileSync(file, input)
          t.diagnostic(`finding (${f.kind}): ${f.what}\n  input: ${file}`)
        }
      }
      assert.deepEqual(
        r.findings.map((f) => f.what),
        [],
        `seed ${seed}: inputs under ${join(FINDINGS, name)}`
      )
      // The search followed coverage: it kept inputs that reached code no seed reached.
      assert.ok(r.corpus > r.seeds, `no input reached new coverage (${r.features} features)`)
    })
  }

  it('the fuzzer follows coverage: it finds a bug behind nested conditions that blind mutation misses', async () => {
    // The same seed and budget for both; the bug needs four bytes right at once (1 in 65536).
    const budget = { target: 'planted', ms: 60_000, seed: 7, maxExecutions: 20_000, maxFindings: 1 }
    const guided = await runTarget(budget)
    const blind = await runTarget({ ...budget, blind: true })
    tally('fuzz executions', guided.executions + blind.executions, import.meta.url)
    assert.equal(guided.findings.length, 1, `not found in ${guided.executions} executions`)
    assert.match(guided.findings[0]?.what ?? '', /TypeError: planted bug/)
    assert.deepEqual(blind.findings, [])
    assert.equal(blind.executions, 20_000)
  })
})
