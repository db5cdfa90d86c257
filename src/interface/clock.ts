/** Time as a component, so tests and the simulator can drive it. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number
}
