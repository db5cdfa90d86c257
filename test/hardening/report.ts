/**
 * Prints the hardening suite's table from the tally the tests wrote, and fails (exit code 1)
 * when a row that must stay at zero is not, or when nothing was tallied at all.
 *   node --import tsx test/hardening/report.ts
 */
import { readFileSync } from 'node:fs'
import { MUST_BE_ZERO, TALLY_ROWS, type TallyRow, tallyPath } from './tally.ts'

interface Line {
  row: TallyRow
  n: number
  file: string
}

function main(): void {
  let text = ''
  try {
    text = readFileSync(tallyPath(), 'utf8')
  } catch {
    process.stderr.write(`no tally at ${tallyPath()}: did the hardening tests run?\n`)
    process.exitCode = 1
    return
  }
  const totals = new Map<TallyRow, number>(TALLY_ROWS.map((r) => [r, 0]))
  const files = new Map<TallyRow, Set<string>>(TALLY_ROWS.map((r) => [r, new Set()]))
  for (const raw of text.split('\n')) {
    if (raw.trim() === '') continue
    const line = JSON.parse(raw) as Line
    totals.set(line.row, (totals.get(line.row) ?? 0) + line.n)
    files.get(line.row)?.add(line.file)
  }
  const out = ['| hardening | count | from |', '|---|---:|---|']
  for (const r of TALLY_ROWS)
    out.push(`| ${r} | ${totals.get(r)} | ${[...(files.get(r) ?? [])].join(', ')} |`)
  process.stdout.write(`${out.join('\n')}\n`)
  const bad = MUST_BE_ZERO.filter((r) => (totals.get(r) ?? 0) > 0)
  if (bad.length > 0) {
    process.stderr.write(`hardening failed: ${bad.join(', ')} not zero\n`)
    process.exitCode = 1
  }
}

main()
