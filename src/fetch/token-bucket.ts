import { AbortedError } from '../errors.ts'

/** A take waiting for its turn. */
interface Waiter {
  bytes: number
  resolve: () => void
  reject: (err: Error) => void
  signal: AbortSignal | undefined
  onAbort: () => void
}

/**
 * A token bucket in bytes: `take(n)` resolves once `n` bytes may go, at `rate` bytes per second
 * on average with bursts up to `burst` bytes. Takers are served in order, urgent ones first (a
 * large take does not starve behind small ones), and a take larger than the burst waits for the
 * deficit to refill, so the average rate holds for any size. Without a rate (`undefined`) every
 * take goes at once; `setRate` changes the rate while takers wait (a configuration reload).
 */
export class TokenBucket {
  #rate: number | undefined
  #burst: number
  #tokens: number
  #updated: number
  readonly #urgent: Waiter[] = []
  readonly #normal: Waiter[] = []
  #timer: NodeJS.Timeout | undefined
  readonly #now: () => number

  /**
   * `rate` in bytes per second (> 0), or undefined for no cap; `burst` in bytes (default: one
   * second's worth).
   */
  constructor(rate: number | undefined, burst = rate, now: () => number = () => performance.now()) {
    checkRate(rate, burst)
    this.#rate = rate
    this.#burst = burst ?? 0
    this.#tokens = this.#burst
    this.#now = now
    this.#updated = now()
  }

  /** Bytes per second, or undefined when there is no cap. */
  get rate(): number | undefined {
    return this.#rate
  }

  get burst(): number {
    return this.#burst
  }

  /**
   * A new rate (undefined: no cap) and burst (default: one second's worth). Takers already
   * waiting go at the new rate; the bucket starts full.
   */
  setRate(rate: number | undefined, burst = rate): void {
    checkRate(rate, burst)
    this.#rate = rate
    this.#burst = burst ?? 0
    this.#tokens = this.#burst
    this.#updated = this.#now()
    this.#serve()
  }

  /**
   * Waits until `bytes` may be sent (or received); rejects with `AbortedError` on abort. An
   * `urgent` take goes before every normal one still waiting.
   */
  take(bytes: number, signal?: AbortSignal, options: { urgent?: boolean } = {}): Promise<void> {
    if (signal?.aborted) return Promise.reject(new AbortedError('rate-limited transfer aborted'))
    if (this.#rate === undefined) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      const queue = options.urgent ? this.#urgent : this.#normal
      const w: Waiter = {
        bytes,
        resolve,
        reject,
        signal,
        onAbort: () => {
          const at = queue.indexOf(w)
          if (at >= 0) queue.splice(at, 1)
          reject(new AbortedError('rate-limited transfer aborted'))
          this.#serve()
        }
      }
      signal?.addEventListener('abort', w.onAbort, { once: true })
      queue.push(w)
      this.#serve()
    })
  }

  /** Lets through every waiter the bucket covers, in turn; sets a timer for the next one. */
  #serve(): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    for (;;) {
      const next = this.#urgent[0] ?? this.#normal[0]
      if (next === undefined) return
      const rate = this.#rate
      if (rate !== undefined) {
        this.#refill(rate)
        // A take larger than the burst goes once the bucket is full, and leaves it in debt.
        const need = Math.min(next.bytes, this.#burst)
        if (this.#tokens < need) {
          this.#timer = setTimeout(() => this.#serve(), ((need - this.#tokens) / rate) * 1000)
          return
        }
      }
      this.#tokens -= next.bytes
      ;(this.#urgent[0] === next ? this.#urgent : this.#normal).shift()
      next.signal?.removeEventListener('abort', next.onAbort)
      next.resolve()
    }
  }

  #refill(rate: number): void {
    const now = this.#now()
    // A clock that steps back (an injected wall clock) adds nothing rather than a deep debt.
    const elapsed = Math.max(0, now - this.#updated)
    this.#tokens = Math.min(this.#burst, this.#tokens + (elapsed / 1000) * rate)
    this.#updated = now
  }
}

function checkRate(rate: number | undefined, burst: number | undefined): void {
  if (rate === undefined) return
  if (!(rate > 0) || !(burst !== undefined && burst > 0)) {
    throw new RangeError('token bucket needs a positive rate and burst')
  }
}
