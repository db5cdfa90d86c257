/** Options every async operation accepts: a signal that cancels it. */
export interface AbortOptions {
  signal?: AbortSignal
}

/** A service with a lifecycle. Both methods are idempotent. */
export interface Startable {
  start(): Promise<void>
  stop(): Promise<void>
}

/** A half-open byte range `[start, end)` within a blob. */
export interface ByteRange {
  start: number
  end: number
}
