import type { Clock } from './interface/clock.ts'

/**
 * Milliseconds since the epoch on a clock that never steps: the wall time when the process
 * started, advanced by the monotonic clock. Close to `Date.now()` until the wall clock is
 * stepped, and unmoved when it is. For ages compared within one process (a peer's claim, a
 * ban), never for times written down.
 */
export function steadyNow(): number {
  return performance.timeOrigin + performance.now()
}

/** The wall clock. The only place Shoal reads `Date.now()`. */
export const systemClock: Clock = {
  now: () => Date.now(),
  steady: steadyNow
}
