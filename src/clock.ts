import type { Clock } from './interface/clock.ts'

/** The wall clock. The only place Shoal reads `Date.now()`. */
export const systemClock: Clock = {
  now: () => Date.now()
}
