/**
 * Runs one fuzz target in a process of its own and prints its result as one JSON line:
 *   node --import tsx test/hardening/fuzz/run-target.ts '{"target":"wire","ms":3000,"seed":1}'
 * Its own process, so coverage starts before the target's code loads and so a parser that
 * crashes the process (a stack overflow, running out of memory) is seen as the crash it is.
 */
import { BlockCoverage } from './coverage.ts'

interface Request {
  target: string
  ms: number
  seed: number
  maxExecutions?: number
  maxFindings?: number
  blind?: boolean
  /** Extra seeds (the regression corpus), base64. */
  seeds?: string[]
}

const coverage = new BlockCoverage()
coverage.start()
const request = JSON.parse(process.argv[2] ?? '{}') as Request
const { SELF_TESTS, TARGETS } = await import('./targets.ts')
const load = TARGETS[request.target] ?? SELF_TESTS[request.target]
if (load === undefined) throw new Error(`no fuzz target "${request.target}"`)
const { fuzz } = await import('./engine.ts')
const target = await load()
const extra = (request.seeds ?? []).map((s) => Buffer.from(s, 'base64'))
const result = await fuzz({ ...target, seeds: [...extra, ...target.seeds] }, coverage, {
  ms: request.ms,
  seed: request.seed,
  maxExecutions: request.maxExecutions,
  maxFindings: request.maxFindings,
  blind: request.blind
})
coverage.stop()
process.stdout.write(
  `${JSON.stringify({
    ...result,
    seeds: extra.length + target.seeds.length,
    findings: result.findings.map((f) => ({ ...f, input: f.input.toString('base64') }))
  })}\n`
)
