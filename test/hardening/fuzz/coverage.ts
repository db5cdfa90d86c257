/**
 * Coverage feedback for the fuzzer from V8 itself: the inspector's precise block coverage with
 * call counts, taken (and so reset) after every input. V8 reports a block only where its count
 * differs from the block around it, so the blocks seen so far are remembered per function and
 * each one's count is that of the innermost reported range holding it. A feature is a block run
 * a number of times in one of libFuzzer's buckets (1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+).
 *
 * Start it before the code under test is loaded: V8 counts blocks only in functions compiled
 * after precise coverage began, and each take costs more (about 1.5 ms) when it did not.
 */
import { Session } from 'node:inspector'

interface Range {
  startOffset: number
  endOffset: number
  count: number
}

interface ScriptCoverage {
  url: string
  functions: { ranges: Range[] }[]
}

/** Block coverage of the scripts whose URL matches `covers`, as sets of feature numbers. */
export class BlockCoverage {
  #covers: RegExp = /^$/
  readonly #session = new Session()
  readonly #urls = new Map<string, number>()
  /** Block ranges seen so far, by function (url id and start offset). */
  readonly #blocks = new Map<number, { ranges: [number, number][]; keys: Set<number> }>()
  #started = false

  /** The scripts whose coverage counts (none until set). */
  set covers(covers: RegExp) {
    this.#covers = covers
  }

  start(): void {
    if (this.#started) return
    this.#session.connect()
    this.#post('Profiler.enable')
    this.#post('Profiler.startPreciseCoverage', { callCount: true, detailed: true })
    this.#started = true
    this.take()
  }

  stop(): void {
    if (!this.#started) return
    this.#started = false
    this.#post('Profiler.stopPreciseCoverage')
    this.#post('Profiler.disable')
    this.#session.disconnect()
  }

  /** The features of what ran since the last take. */
  take(): Set<number> {
    const { result } = this.#post('Profiler.takePreciseCoverage') as { result: ScriptCoverage[] }
    const features = new Set<number>()
    for (const script of result) {
      if (!this.#covers.test(script.url)) continue
      const urlId = this.#urlId(script.url)
      for (const fn of script.functions) {
        const ranges = fn.ranges
        const outer = ranges[0]
        if (outer === undefined || outer.count === 0) continue
        const fnKey = urlId * 2 ** 32 + outer.startOffset
        let known = this.#blocks.get(fnKey)
        if (known === undefined) {
          known = { ranges: [], keys: new Set() }
          this.#blocks.set(fnKey, known)
        }
        for (const r of ranges) {
          const key = r.startOffset * 2 ** 26 + r.endOffset
          if (!known.keys.has(key)) {
            known.keys.add(key)
            known.ranges.push([r.startOffset, r.endOffset])
          }
        }
        if (ranges.length === 1) {
          // Nothing ran a different number of times: every block ran as often as the function.
          const b = bucket(outer.count)
          for (const [s] of known.ranges) features.add((urlId * 2 ** 24 + s) * 16 + b)
          continue
        }
        for (const [s, e] of known.ranges) {
          const count = innermostCount(ranges, s, e)
          if (count > 0) features.add((urlId * 2 ** 24 + s) * 16 + bucket(count))
        }
      }
    }
    return features
  }

  #urlId(url: string): number {
    let id = this.#urls.get(url)
    if (id === undefined) {
      id = this.#urls.size
      this.#urls.set(url, id)
    }
    return id
  }

  /** The inspector answers a session of the main thread synchronously. */
  #post(method: string, params: object = {}): unknown {
    let answered = false
    let out: unknown
    let failure: Error | null = null
    this.#session.post(method, params, (err, res) => {
      answered = true
      failure = err
      out = res
    })
    if (!answered) throw new Error(`the inspector did not answer ${method} synchronously`)
    if (failure) throw failure
    return out
  }
}

/**
 * The count of the smallest reported range holding [s, e). V8 lists a function's ranges in
 * order of their start, each after the ranges that hold it: the last holder found is the smallest.
 */
function innermostCount(ranges: Range[], s: number, e: number): number {
  let count = 0
  for (const r of ranges) {
    if (r.startOffset > s) break
    if (e <= r.endOffset) count = r.count
  }
  return count
}

/** libFuzzer's hit-count buckets, 1..8. */
function bucket(count: number): number {
  if (count <= 3) return count
  if (count < 8) return 4
  if (count < 16) return 5
  if (count < 32) return 6
  if (count < 128) return 7
  return 8
}
