/**
 * Stream helpers shared by both ends of the piece protocol. They follow shared/recipes/libp2p.md
 * ("Streams in libp2p 3"): read from `message` events, wait for the `drain` event (never
 * `onDrain()`) whenever `send()` returns false, and never leave a stream half-closed forever.
 */
import type { Stream } from '@libp2p/interface'
import { second } from '../constants.ts'
import {
  AbortedError,
  BlobUnknownError,
  PeerDrainingError,
  PieceBusyError,
  RangeNotSatisfiableError,
  type ShoalError,
  UpstreamTimeoutError,
  UpstreamUnavailableError
} from '../errors.ts'
import { encodeFrameParts, type WireMessage } from './wire.ts'

// How long a closing session waits for the remote to close its side before aborting.
const LINGER_MS = 5 * second

/** Sends every part of a frame; returns false when the caller must wait for `drain`. */
export function sendFrame(stream: Stream, msg: WireMessage): boolean {
  let more = true
  for (const part of encodeFrameParts(msg)) {
    if (part.length > 0) more = stream.send(part)
  }
  return more
}

/** Waits for the stream's `drain` event. Rejects when the stream closes or `signal` aborts. */
export function waitForDrain(stream: Stream, signal: AbortSignal): Promise<void> {
  if (!stream.writableNeedsDrain) return Promise.resolve()
  return new Promise<void>((resolve, reject) => {
    const done = (err?: Error) => {
      stream.removeEventListener('drain', onDrain)
      stream.removeEventListener('close', onClose)
      signal.removeEventListener('abort', onAbort)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onDrain = () => done()
    const onClose = () => done(new AbortedError('stream closed while waiting to send'))
    const onAbort = () => done(new AbortedError('session aborted while waiting to send'))
    stream.addEventListener('drain', onDrain)
    stream.addEventListener('close', onClose)
    signal.addEventListener('abort', onAbort)
    if (signal.aborted) onAbort()
  })
}

/** Closes our write side; aborts the stream when it has not fully closed after a linger. */
export function closeWithLinger(stream: Stream): void {
  const timer = setTimeout(() => stream.abort(new AbortedError('peer did not close the stream')), LINGER_MS)
  timer.unref()
  stream.addEventListener('close', () => clearTimeout(timer), { once: true })
  stream.close().catch((err: unknown) => stream.abort(toError(err)))
}

/** Sends `busy` and closes the stream. */
export function refuseBusy(stream: Stream, retryAfterMs: number): void {
  try {
    sendFrame(stream, { type: 'busy', retryAfterMs })
  } catch (err) {
    stream.abort(toError(err))
    return
  }
  closeWithLinger(stream)
}

/**
 * Sends `reject {PEER_DRAINING}` before any hello and closes the stream: this node is leaving,
 * the client should take the blob elsewhere (a `busy` would have it come back).
 */
export function refuseDraining(stream: Stream): void {
  try {
    sendFrame(stream, { type: 'reject', index: 0, code: PeerDrainingError.code })
  } catch (err) {
    stream.abort(toError(err))
    return
  }
  closeWithLinger(stream)
}

/** The error a `reject {code}` stands for. */
export function rejectError(code: string, message: string): ShoalError {
  switch (code) {
    case BlobUnknownError.code:
      return new BlobUnknownError(message)
    case RangeNotSatisfiableError.code:
      return new RangeNotSatisfiableError(message)
    case PeerDrainingError.code:
      return new PeerDrainingError(`${message}: the peer is draining`)
    case PieceBusyError.code:
      return new PieceBusyError(`${message}: the peer is uploading all the pieces it allows`)
    default:
      return new UpstreamUnavailableError(`${message} (${code})`)
  }
}

/** A timer combined with an optional caller's signal; `expired` tells which one fired. */
export class Deadline {
  readonly signal: AbortSignal
  readonly #controller = new AbortController()
  readonly #timer: NodeJS.Timeout
  expired = false

  constructor(ms: number, parent?: AbortSignal) {
    this.#timer = setTimeout(() => {
      this.expired = true
      this.#controller.abort(new UpstreamTimeoutError(`deadline of ${ms} ms passed`))
    }, ms)
    this.signal =
      parent === undefined ? this.#controller.signal : AbortSignal.any([parent, this.#controller.signal])
  }

  clear(): void {
    clearTimeout(this.#timer)
  }
}

export function toError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err))
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
