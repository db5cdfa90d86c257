import { chmod, mkdir, rm, stat } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createConnection } from 'node:net'
import { dirname } from 'node:path'
import type { Logger } from 'pino'
import { parseDigest } from '../content/digest.ts'
import { piecesCovering } from '../content/pieces.ts'
import { BadRequestError, InternalError, NotFoundError, toShoalError } from '../errors.ts'
import type { BlobFetcher, BlobRequest } from '../fetch/blob-fetcher.ts'
import type { ImagePuller, PullEvent } from '../fetch/image-puller.ts'
import type { ManifestResolver } from '../fetch/manifests.ts'
import type { Clock } from '../interface/clock.ts'
import type { Startable } from '../interface/common.ts'
import type { Materializer } from '../interface/materializer.ts'
import type { BlobStore } from '../interface/store.ts'
import { parsePlatform } from '../oci/platform.ts'
import { parseReference } from '../oci/reference.ts'
import { sendStoredBlob } from './blob-response.ts'
import type { DaemonRoutes } from './daemon-routes.ts'
import { healthRoute, type Readiness } from './health.ts'
import {
  closeServer,
  decodePathPart,
  listen,
  parseRange,
  readBody,
  requestSignal,
  sendError,
  sendJson
} from './http.ts'
import { MaterializeRoutes } from './materialize-routes.ts'
import type { ShoalMetrics } from './metrics.ts'

/** Largest range served on demand before its blob is complete; larger ones wait for the blob. */
const MAX_LAZY_RANGE = 64 * 1024 * 1024

export interface SocketApiComponents {
  store: BlobStore
  fetcher: BlobFetcher
  puller: ImagePuller
  manifests: ManifestResolver
  /** Lays out pulled images for mounting (`/v1/materialize`, `/v1/release`, `/v1/prune`). */
  materializer: Materializer
  clock: Clock
  logger: Logger
  metrics: ShoalMetrics
  /** Drain, gc, pin and unpin (`/v1/drain`, `/v1/gc`, `/v1/pin`, `/v1/unpin`). */
  daemon?: DaemonRoutes
}

export interface SocketApiInit {
  path: string
  /** File mode of the socket (0o660: owner and group). */
  mode: number
  /** Extra fields for `/v1/status` (addresses, version, peers, pins). */
  describe?: () => Record<string, unknown> | Promise<Record<string, unknown>>
  /** What `/readyz` answers. */
  readiness?: () => Readiness
}

/** The daemon's own routes, by `METHOD /path`. */
const DAEMON_ROUTES = {
  'POST /v1/drain': 'drain',
  'POST /v1/gc': 'gc',
  'POST /v1/pin': 'pin',
  'POST /v1/unpin': 'unpin'
} as const

/**
 * The runtime-facing API on a unix socket (`curl --unix-socket`): pull with NDJSON progress,
 * blobs with Range (the asked-for range first), materialize and release (see
 * `MaterializeRoutes`), drain, gc and pins (see `DaemonRoutes`), status, health, readiness
 * and metrics.
 */
export class SocketApi implements Startable {
  readonly #c: SocketApiComponents
  readonly #init: SocketApiInit
  readonly #log: Logger
  readonly #startedAt: number
  readonly #materialize: MaterializeRoutes
  #server: Server | undefined

  constructor(components: SocketApiComponents, init: SocketApiInit) {
    this.#c = components
    this.#init = init
    this.#log = components.logger.child({ component: 'socket-api' })
    this.#startedAt = components.clock.now()
    this.#materialize = new MaterializeRoutes(components)
  }

  async start(): Promise<void> {
    if (this.#server) return
    await mkdir(dirname(this.#init.path), { recursive: true, mode: 0o755 })
    await this.#removeStaleSocket()
    const server = createServer((req, res) => {
      res.on('finish', () =>
        this.#c.metrics.httpRequests.inc({ interface: 'socket', status: res.statusCode })
      )
      this.#handle(req, res).catch((err) => {
        const status = sendError(res, err, req.method === 'HEAD')
        if (status >= 500)
          this.#log.warn({ path: req.url?.slice(0, 300), err: toShoalError(err).message }, 'request failed')
      })
    })
    // The umask keeps the socket private from the moment it exists; chmod then sets the mode.
    // (listen creates the socket file synchronously, so restoring the umask right after is safe.)
    const old = process.umask(0o177)
    let listening: Promise<void>
    try {
      listening = listen(server, { path: this.#init.path })
    } finally {
      process.umask(old)
    }
    await listening
    await chmod(this.#init.path, this.#init.mode)
    this.#server = server
    this.#log.info({ path: this.#init.path }, 'socket API listening')
  }

  async stop(): Promise<void> {
    const s = this.#server
    if (!s) return
    this.#server = undefined
    await closeServer(s)
    await rm(this.#init.path, { force: true })
  }

  async #removeStaleSocket(): Promise<void> {
    const st = await stat(this.#init.path).catch(() => undefined)
    if (!st) return
    if (!st.isSocket())
      throw new InternalError(`${this.#init.path} exists and is not a socket; refusing to replace it`)
    const live = await new Promise<boolean>((resolve) => {
      const c = createConnection(this.#init.path)
      c.once('connect', () => {
        c.destroy()
        resolve(true)
      })
      c.once('error', () => resolve(false))
    })
    if (live) throw new InternalError(`another agent is listening on ${this.#init.path}`)
    await rm(this.#init.path, { force: true })
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://shoal')
    const route = `${req.method} ${url.pathname}`
    if (req.method === 'GET' || req.method === 'HEAD') {
      if (healthRoute(res, url.pathname, req.method === 'HEAD', this.#init.readiness)) return
    }
    const daemon = DAEMON_ROUTES[route as keyof typeof DAEMON_ROUTES]
    if (daemon !== undefined && this.#c.daemon !== undefined) {
      await this.#c.daemon[daemon](req, res)
      return
    }
    if (route === 'GET /v1/health') {
      this.#c.store.usage() // throws when the store is closed
      sendJson(res, 200, { status: 'ok' })
      return
    }
    if (route === 'GET /v1/status') {
      sendJson(res, 200, await this.#status())
      return
    }
    if (route === 'GET /metrics') {
      const m = await this.#c.metrics.render()
      res.writeHead(200, { 'Content-Type': m.contentType }).end(m.body)
      return
    }
    if (route === 'POST /v1/pull') {
      await this.#pull(req, res)
      return
    }
    if (route === 'POST /v1/materialize') {
      await this.#materialize.materialize(req, res)
      return
    }
    if (route === 'POST /v1/release') {
      await this.#materialize.release(req, res)
      return
    }
    if (route === 'POST /v1/prune') {
      await this.#materialize.prune(req, res)
      return
    }
    const blob = /^\/v1\/blobs\/([^/]+)$/.exec(url.pathname)
    if (blob && (req.method === 'GET' || req.method === 'HEAD')) {
      await this.#blob(req, res, parseDigest(decodePathPart(blob[1] ?? '')), url.searchParams)
      return
    }
    throw new NotFoundError(`no route for ${route.slice(0, 200)}`)
  }

  async #status(): Promise<Record<string, unknown>> {
    const fetched: Record<string, number> = {}
    for (const v of (await this.#c.metrics.bytesFetched.get()).values) {
      fetched[String(v.labels.source)] = v.value
    }
    const served: Record<string, number> = {}
    for (const v of (await this.#c.metrics.bytesServed.get()).values) {
      served[String(v.labels.interface)] = v.value
    }
    return {
      ...(await this.#init.describe?.()),
      uptimeMs: this.#c.clock.now() - this.#startedAt,
      store: this.#c.store.usage(),
      transfers: this.#c.fetcher.status(),
      bytes: { fetched, served },
      materializer: this.#c.materializer.driver,
      materializations: this.#materialize.list()
    }
  }

  async #pull(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let body: { reference?: unknown; platform?: unknown }
    try {
      body = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8') || '{}')
    } catch (err) {
      throw err instanceof SyntaxError ? new BadRequestError(`pull body is not JSON: ${err.message}`) : err
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body))
      throw new BadRequestError('pull body must be a JSON object')
    if (typeof body.reference !== 'string')
      throw new BadRequestError('pull body needs "reference": "<image ref>"')
    parseReference(body.reference)
    const platform = typeof body.platform === 'string' ? parsePlatform(body.platform) : undefined
    const signal = requestSignal(req, res)
    res.writeHead(200, { 'Content-Type': 'application/x-ndjson', 'Cache-Control': 'no-store' })
    const send = (e: PullEvent | { type: 'error'; code: string; message: string }) => {
      if (!res.writableEnded) res.write(`${JSON.stringify(e)}\n`)
    }
    try {
      await this.#c.puller.pull(body.reference, { platform, signal, onEvent: send })
    } catch (err) {
      const e = toShoalError(err)
      send({ type: 'error', code: e.code, message: e.message })
    }
    res.end()
  }

  /**
   * A blob, whole or by Range. A complete blob streams from the store. For an incomplete one the
   * requested range is fetched first and served as soon as its pieces are held, but only from
   * pieces this node took from the seed itself; anything else waits for the whole-blob check.
   */
  async #blob(req: IncomingMessage, res: ServerResponse, digest: string, q: URLSearchParams): Promise<void> {
    const head = req.method === 'HEAD'
    const signal = requestSignal(req, res)
    let info = await this.#c.store.stat(digest)
    if (!info?.complete) {
      const request = this.#blobRequest(digest, q)
      const rangeHeader = req.headers.range
      if (rangeHeader && !head) {
        const size = info?.size ?? request.size
        const range = size === undefined ? undefined : parseRange(rangeHeader, size)
        if (range && range.end - range.start <= MAX_LAZY_RANGE) {
          info = await this.#c.fetcher.fetchRange(request, range, { signal })
          const wanted = new Set(piecesCovering(range, info.pieceSize))
          const vouched = (await this.#c.store.pieces(digest)).filter(
            (p) => wanted.has(p.index) && p.source !== 'peer'
          )
          if (vouched.length === wanted.size) {
            const bytes = await this.#c.store.read(digest, range, { signal })
            res.writeHead(206, {
              'Content-Type': 'application/octet-stream',
              'Content-Length': bytes.length,
              'Content-Range': `bytes ${range.start}-${range.end - 1}/${info.size}`,
              'Docker-Content-Digest': digest
            })
            res.end(bytes)
            this.#c.metrics.bytesServed.inc({ interface: 'socket' }, bytes.length)
            return
          }
        }
      }
      info = await this.#c.fetcher.fetch(request, { signal })
    }
    await sendStoredBlob(res, info, {
      store: this.#c.store,
      metrics: this.#c.metrics,
      iface: 'socket',
      head,
      rangeHeader: req.headers.range
    })
  }

  /** Where to fetch a blob from: `?ref=<registry>/<repository>` or a hint from a manifest seen. */
  #blobRequest(digest: string, q: URLSearchParams): BlobRequest {
    const hint = this.#c.manifests.hint(digest)
    const ref = q.get('ref')
    if (ref) {
      const r = parseReference(ref)
      return {
        digest,
        registry: r.registry,
        repository: r.repository,
        size: hint?.size,
        mediaType: hint?.mediaType,
        accessKey: hint?.accessKey
      }
    }
    if (hint) return { digest, ...hint }
    throw new BadRequestError(
      `blob ${digest} is not in the store and no ?ref=<registry>/<repository> says where to fetch it`
    )
  }
}
