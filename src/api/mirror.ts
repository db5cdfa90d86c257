import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Logger } from 'pino'
import { accessKey } from '../content/access.ts'
import { parseDigest } from '../content/digest.ts'
import { BadRequestError, httpStatusOf, NotFoundError, toShoalError } from '../errors.ts'
import type { BlobFetcher } from '../fetch/blob-fetcher.ts'
import type { ManifestResolver } from '../fetch/manifests.ts'
import type { Startable } from '../interface/common.ts'
import type { BlobStore } from '../interface/store.ts'
import type { UpstreamResolver } from '../interface/upstream.ts'
import { parseRegistryHost, parseTagOrDigest } from '../oci/reference.ts'
import { sendStoredBlob } from './blob-response.ts'
import { healthRoute, type Readiness } from './health.ts'
import { closeServer, decodePathPart, listen, requestSignal } from './http.ts'
import type { ShoalMetrics } from './metrics.ts'

export interface RegistryMirrorComponents {
  store: BlobStore
  fetcher: BlobFetcher
  manifests: ManifestResolver
  upstreams: UpstreamResolver
  logger: Logger
  metrics: ShoalMetrics
}

export interface RegistryMirrorInit {
  /** host:port; loopback by default. */
  listen: string
  /** Upstream for requests that name no registry. */
  defaultRegistry: string
  /**
   * On a manifest GET, start fetching its config and layers at once, before the runtime asks:
   * the runtime's next round trips overlap the agent's fetch. Default true.
   */
  prefetch?: boolean
  /** What `/readyz` answers (next to `/healthz` and `/metrics`). */
  readiness?: () => Readiness
}

/** Distribution error codes clients understand, by Shoal code. */
const DIST_CODE: Record<string, string> = {
  UPSTREAM_NOT_FOUND: 'MANIFEST_UNKNOWN',
  BLOB_UNKNOWN: 'BLOB_UNKNOWN',
  INVALID_DIGEST: 'DIGEST_INVALID',
  DIGEST_MISMATCH: 'DIGEST_INVALID',
  INVALID_REFERENCE: 'NAME_INVALID',
  UPSTREAM_UNAUTHORIZED: 'DENIED',
  RANGE_NOT_SATISFIABLE: 'BLOB_UNKNOWN'
}

const ROUTE = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/

/**
 * A read-only OCI distribution endpoint on localhost that containerd (hosts.toml), podman and
 * skopeo (registries.conf mirror) pull through unchanged. Every blob it answers with is complete
 * and verified first; any failure is a fast 4xx/5xx so the client can go direct.
 */
export class RegistryMirror implements Startable {
  readonly #c: RegistryMirrorComponents
  readonly #init: RegistryMirrorInit
  readonly #log: Logger
  #server: Server | undefined

  constructor(components: RegistryMirrorComponents, init: RegistryMirrorInit) {
    this.#c = components
    this.#init = init
    this.#log = components.logger.child({ component: 'mirror' })
  }

  /** The address actually bound (port 0 in the config picks a free port). */
  get address(): string {
    const a = this.#server?.address() as AddressInfo | null
    return a ? `${a.address}:${a.port}` : this.#init.listen
  }

  async start(): Promise<void> {
    if (this.#server) return
    const i = this.#init.listen.lastIndexOf(':')
    const host = this.#init.listen.slice(0, i).replace(/^\[|\]$/g, '')
    const port = Number(this.#init.listen.slice(i + 1))
    const server = createServer({ keepAlive: true }, (req, res) => {
      this.#handle(req, res).catch((err) => this.#fail(req, res, err))
    })
    // containers/image first tries TLS on a plain port: answer garbage with a 400 and move on.
    server.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n')
    })
    await listen(server, { port, host })
    this.#server = server
    this.#log.info({ address: this.address }, 'registry mirror listening')
  }

  async stop(): Promise<void> {
    const s = this.#server
    if (!s) return
    this.#server = undefined
    await closeServer(s)
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://mirror')
    const head = req.method === 'HEAD'
    const started = performance.now()
    res.on('finish', () => {
      this.#c.metrics.httpRequests.inc({ interface: 'mirror', status: res.statusCode })
      this.#log.debug(
        {
          method: req.method,
          path: url.pathname,
          status: res.statusCode,
          ms: Math.round(performance.now() - started)
        },
        'mirror request'
      )
    })
    if (req.method !== 'GET' && !head) {
      res.writeHead(405, { Allow: 'GET, HEAD' }).end()
      return
    }
    if (url.pathname === '/v2/' || url.pathname === '/v2') {
      res.writeHead(200, {
        'Content-Type': 'application/json',
        'Docker-Distribution-API-Version': 'registry/2.0'
      })
      res.end(head ? undefined : '{}')
      return
    }
    if (healthRoute(res, url.pathname, head, this.#init.readiness)) return
    if (url.pathname === '/metrics') {
      const m = await this.#c.metrics.render()
      res.writeHead(200, { 'Content-Type': m.contentType }).end(m.body)
      return
    }
    const m = ROUTE.exec(url.pathname)
    if (!m) throw new NotFoundError(`no route for ${url.pathname.slice(0, 200)}`)
    const [, name = '', kind, reference = ''] = m
    const at = this.#locate(decodePathPart(name), url.searchParams.get('ns'))
    const signal = requestSignal(req, res)
    if (kind === 'manifests') {
      // A tag or a digest, nothing else: it goes into the upstream's URL path.
      const ref = parseTagOrDigest(decodePathPart(reference))
      await this.#manifest(req, res, { ...at, reference: ref, head, signal })
    } else {
      await this.#blob(req, res, { ...at, digest: parseDigest(decodePathPart(reference)), head, signal })
    }
  }

  /** The upstream registry and repository of a request: `?ns=`, a host in the path, or the default. */
  #locate(name: string, ns: string | null): { registry: string; repository: string } {
    let registry = ns ?? undefined
    let repository = name
    if (!registry) {
      const first = name.split('/')[0] ?? ''
      if (name.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost')) {
        registry = first
        repository = name.slice(first.length + 1)
      } else {
        registry = this.#init.defaultRegistry
      }
    }
    // It names the host the agent connects to (with credentials, when configured for it).
    parseRegistryHost(registry)
    if (registry === 'docker.io' && !repository.includes('/')) repository = `library/${repository}`
    if (
      !/^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/.test(repository)
    ) {
      throw new BadRequestError(`invalid repository name "${repository.slice(0, 100)}"`)
    }
    return { registry, repository }
  }

  async #manifest(
    req: IncomingMessage,
    res: ServerResponse,
    r: { registry: string; repository: string; reference: string; head: boolean; signal: AbortSignal }
  ): Promise<void> {
    const accept = req.headers.accept
      ?.split(',')
      .map((s) => s.trim())
      .filter(Boolean)
    const q = {
      registry: r.registry,
      repository: r.repository,
      reference: r.reference,
      accept,
      signal: r.signal
    }
    const m = r.head ? await this.#c.manifests.head(q) : await this.#c.manifests.get(q)
    res.writeHead(200, {
      'Content-Type': m.mediaType,
      'Content-Length': m.size,
      'Docker-Content-Digest': m.digest,
      ETag: `"${m.digest}"`
    })
    if (r.head || !('bytes' in m)) {
      res.end()
      return
    }
    const bytes = (m as { bytes: Uint8Array }).bytes
    res.end(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength))
    this.#c.metrics.bytesServed.inc({ interface: 'mirror' }, m.size)
    if (this.#init.prefetch !== false) this.#prefetch(bytes, m.mediaType, r)
  }

  /** Starts the fetch of every blob a manifest names; errors surface when the runtime asks. */
  #prefetch(bytes: Uint8Array, mediaType: string, at: { registry: string; repository: string }): void {
    let parsed: ReturnType<ManifestResolver['parse']>
    try {
      parsed = this.#c.manifests.parse(bytes, mediaType, at)
    } catch {
      return // served verbatim; the runtime will judge it
    }
    if (parsed.kind !== 'manifest') return
    const key = accessKey(bytes)
    for (const d of [parsed.config, ...parsed.layers]) {
      this.#c.fetcher
        .fetch({ digest: d.digest, size: d.size, mediaType: d.mediaType, ...at, accessKey: key })
        .catch((err) =>
          this.#log.debug({ digest: d.digest, err: toShoalError(err).message }, 'prefetch failed')
        )
    }
  }

  async #blob(
    req: IncomingMessage,
    res: ServerResponse,
    r: { registry: string; repository: string; digest: string; head: boolean; signal: AbortSignal }
  ): Promise<void> {
    let info = await this.#c.store.stat(r.digest)
    if (!info?.complete) {
      const hint = this.#c.manifests.hint(r.digest)
      if (r.head) {
        const size =
          hint?.size ?? (await this.#c.upstreams.resolve(r.registry).statBlob(r.repository, r.digest, r)).size
        res.writeHead(200, {
          'Content-Type': 'application/octet-stream',
          'Content-Length': size,
          'Docker-Content-Digest': r.digest,
          'Accept-Ranges': 'bytes'
        })
        res.end()
        return
      }
      info = await this.#c.fetcher.fetch(
        {
          digest: r.digest,
          size: hint?.size,
          mediaType: hint?.mediaType,
          registry: r.registry,
          repository: r.repository,
          // The key of the manifest that named it, if one passed through: without it a private
          // blob cannot be had from peers and comes from the registry.
          accessKey: hint?.accessKey
        },
        { signal: r.signal }
      )
    }
    await sendStoredBlob(res, info, {
      store: this.#c.store,
      metrics: this.#c.metrics,
      iface: 'mirror',
      head: r.head,
      rangeHeader: req.headers.range
    })
  }

  #fail(req: IncomingMessage, res: ServerResponse, err: unknown): void {
    const e = toShoalError(err)
    const status = httpStatusOf(e)
    const level = status >= 500 && e.code !== 'ABORTED' ? 'warn' : 'debug'
    this.#log[level](
      { method: req.method, path: req.url?.slice(0, 300), code: e.code, err: e.message },
      'mirror request failed'
    )
    if (res.headersSent) {
      res.destroy()
      return
    }
    const isBlob = /\/blobs\//.test(req.url ?? '')
    const dist = e.code === 'UPSTREAM_NOT_FOUND' && isBlob ? 'BLOB_UNKNOWN' : DIST_CODE[e.code]
    const body = JSON.stringify({
      errors: [{ code: dist ?? 'UNKNOWN', message: e.message, detail: { code: e.code } }]
    })
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) })
    res.end(req.method === 'HEAD' ? undefined : body)
  }
}
