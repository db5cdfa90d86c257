/** Time as a component, so tests and the simulator can drive it. */
export interface Clock {
  /** Milliseconds since the epoch: for times recorded or shown (last use, start of a transfer). */
  now(): number
  /**
   * Milliseconds on a clock that never steps, for ages and deadlines within one process (claims,
   * patience, timeouts): a wall-clock step (NTP, a resumed VM) must neither stretch nor cut them.
   * A clock without it measures ages with `now()`.
   */
  steady?(): number
}
