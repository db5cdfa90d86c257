/**
 * The hardening suite's tally: each test adds what it tried and what it saw, and `report.ts`
 * prints the totals as one table after the run. Counts go to a JSON-lines file so tests in
 * separate processes (node --test runs each file in its own) add to one tally.
 */
import { appendFileSync } from 'node:fs'
import { basename } from 'node:path'

/** The rows of the table, in the order it prints them. */
export const TALLY_ROWS = [
  'kills survived',
  'faults injected',
  'hostile inputs tried',
  'fuzz executions',
  'concurrent requests held',
  'corrupt bytes served',
  'lost blobs',
  'unexpected crashes'
] as const

export type TallyRow = (typeof TALLY_ROWS)[number]

/** Rows that must stay at zero for the suite to pass. */
export const MUST_BE_ZERO: readonly TallyRow[] = ['corrupt bytes served', 'lost blobs', 'unexpected crashes']

/** The file the counts go to: SHOAL_TALLY, or test/hardening/.tally.jsonl. */
export function tallyPath(): string {
  return process.env.SHOAL_TALLY ?? new URL('./.tally.jsonl', import.meta.url).pathname
}

/** Adds `n` to `row`, noting which test file (`source`, e.g. import.meta.url) counted it. */
export function tally(row: TallyRow, n: number, source: string): void {
  if (!Number.isFinite(n) || n < 0) throw new RangeError(`tally ${row}: ${n} is not a count`)
  appendFileSync(tallyPath(), `${JSON.stringify({ row, n, file: basename(source) })}\n`)
}
