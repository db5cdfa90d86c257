import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import { parseDuration, parseSize } from '../config/units.ts'
import { BadRequestError } from '../errors.ts'
import type { ImagePins } from '../fetch/image-pins.ts'
import type { BlobStore } from '../interface/store.ts'
import { readBody, requestSignal, sendJson } from './http.ts'
import type { ShoalMetrics } from './metrics.ts'

/** What a drain did. */
export interface DrainResult {
  /** Blobs whose provider records were withdrawn. */
  withdrawn: number
  /** Uploads still running when the drain stopped waiting (0: all ended on their own). */
  uploadsLeft: number
  waitedMs: number
}

export interface DaemonRoutesComponents {
  store: BlobStore
  pins: ImagePins
  logger: Logger
  metrics: ShoalMetrics
}

export interface DaemonRoutesInit {
  /** Stops advertising and waits up to `timeoutMs` for uploads in flight (the agent's drain). */
  drain: (options: { timeoutMs: number }) => Promise<DrainResult>
  /** How long `POST /v1/drain` waits when the body names no timeout. */
  drainTimeoutMs: number
}

/** Longest a drain request may wait. */
const MAX_DRAIN_WAIT_MS = 60 * 60 * 1000

/**
 * `POST /v1/drain`, `/v1/gc`, `/v1/pin` and `/v1/unpin` of the socket API: the operator's
 * handles on a running agent (`shoal drain`, `shoal gc`, `shoal pin`, `shoal unpin`).
 */
export class DaemonRoutes {
  readonly #c: DaemonRoutesComponents
  readonly #init: DaemonRoutesInit
  readonly #log: Logger

  constructor(components: DaemonRoutesComponents, init: DaemonRoutesInit) {
    this.#c = components
    this.#init = init
    this.#log = components.logger.child({ component: 'daemon-api' })
  }

  /** `{"timeout"?: "30s"}`: drains (one way: only a restart undoes it) and says what it did. */
  async drain(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJson(req)
    const timeoutMs = body.timeout === undefined ? this.#init.drainTimeoutMs : parseDuration(body.timeout)
    if (timeoutMs === undefined || timeoutMs > MAX_DRAIN_WAIT_MS) {
      throw new BadRequestError('drain "timeout" must be a duration up to 1h, e.g. "30s"')
    }
    sendJson(res, 200, await this.#init.drain({ timeoutMs }))
  }

  /**
   * `{"target"?: "10GiB"}`: evicts complete blobs neither pinned nor in use, least recently used
   * first, down to the target, or all of them without one.
   */
  async gc(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJson(req)
    const targetBytes = body.target === undefined ? undefined : parseSize(body.target)
    if (body.target !== undefined && targetBytes === undefined) {
      throw new BadRequestError('gc "target" must be a size, e.g. "10GiB"')
    }
    const r = await this.#c.store.evict({
      ...(targetBytes !== undefined && { targetBytes }),
      signal: requestSignal(req, res)
    })
    this.#c.metrics.evictedBytes.inc({ reason: 'gc' }, r.freedBytes)
    this.#log.info({ blobs: r.evicted.length, freedBytes: r.freedBytes, targetBytes }, 'gc')
    sendJson(res, 200, r)
  }

  /** `{"target": "<reference or digest>"}`: pins it (pulling an image first). */
  async pin(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const target = targetOf(await readJson(req), 'pin')
    sendJson(res, 200, await this.#c.pins.pin(target, { signal: requestSignal(req, res) }))
  }

  /** `{"target": "<reference or digest>"}`: drops that pin; `NOT_PINNED` when there is none. */
  async unpin(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const target = targetOf(await readJson(req), 'unpin')
    sendJson(res, 200, await this.#c.pins.unpin(target, { signal: requestSignal(req, res) }))
  }
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  let body: unknown
  try {
    body = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8') || '{}')
  } catch (err) {
    throw err instanceof SyntaxError ? new BadRequestError(`body is not JSON: ${err.message}`) : err
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new BadRequestError('body must be a JSON object')
  }
  return body as Record<string, unknown>
}

function targetOf(body: Record<string, unknown>, what: string): string {
  if (typeof body.target !== 'string' || body.target === '') {
    throw new BadRequestError(`${what} body needs "target": "<image reference or sha256 digest>"`)
  }
  return body.target
}
