import { AbortedError } from '../errors.ts'

/**
 * A token bucket in bytes: `take(n)` resolves once `n` bytes may go, at `rate` bytes per second
 * on average with bursts up to `burst` bytes. Takers are served in order (a large take does not
 * starve behind small ones), and a take larger than the burst waits for the deficit to refill,
 * so the average rate holds for any size.
 */
export class TokenBucket {
  readonly rate: number
  readonly burst: number
  #tokens: number
  #updated: number
  // Each take waits for the one before it: order is first come, first served.
  #tail: Promise<void> = Promise.resolve()
  readonly #now: () => number

  /** `rate` in bytes per second (> 0); `burst` in bytes (default: one second's worth). */
  constructor(rate: number, burst = rate, now: () => number = () => performance.now()) {
    if (!(rate > 0) || !(burst > 0)) throw new RangeError(`token bucket needs a positive rate and burst`)
    this.rate = rate
    this.burst = burst
    this.#tokens = burst
    this.#now = now
    this.#updated = now()
  }

  /** Waits until `bytes` may be sent (or received); rejects with `AbortedError` on abort. */
  take(bytes: number, signal?: AbortSignal): Promise<void> {
    const turn = this.#tail.then(() => this.#wait(bytes, signal))
    // A taker that gave up does not hold up the ones behind it.
    this.#tail = turn.catch(() => undefined)
    return turn
  }

  async #wait(bytes: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) throw new AbortedError('rate-limited transfer aborted')
    this.#refill()
    this.#tokens -= bytes
    if (this.#tokens >= 0) return
    const ms = (-this.#tokens / this.rate) * 1000
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(done, ms)
      function done(): void {
        signal?.removeEventListener('abort', onAbort)
        resolve()
      }
      const onAbort = (): void => {
        clearTimeout(timer)
        reject(new AbortedError('rate-limited transfer aborted'))
      }
      signal?.addEventListener('abort', onAbort, { once: true })
    }).catch((err: unknown) => {
      // The bytes were not sent: give them back.
      this.#tokens += bytes
      throw err
    })
  }

  #refill(): void {
    const now = this.#now()
    this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#updated) / 1000) * this.rate)
    this.#updated = now
  }
}
