import { toShoalError } from '../errors.ts'

/**
 * Waits for `work`, or rejects with `AbortedError` as soon as `signal` aborts. Only the wait
 * ends: the work goes on, for whoever else waits for it (a layer another call is building).
 */
export function abortable<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return work
  if (signal.aborted) return Promise.reject(toShoalError(signal.reason))
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(toShoalError(signal.reason))
    signal.addEventListener('abort', onAbort, { once: true })
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}
