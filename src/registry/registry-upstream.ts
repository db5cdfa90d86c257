import { setTimeout as sleep } from 'node:timers/promises'
import pRetry, { AbortError as StopRetrying } from 'p-retry'
import type { Logger } from 'pino'
import { Agent, type Dispatcher, request } from 'undici'
import { systemClock } from '../clock.ts'
import { MAX_BLOB_SIZE, MAX_MANIFEST_SIZE, second } from '../constants.ts'
import { digestOf, isDigest, parseDigest } from '../content/digest.ts'
import {
  AbortedError,
  DigestMismatchError,
  RangeNotSatisfiableError,
  ShoalError,
  SizeMismatchError,
  UpstreamNotFoundError,
  UpstreamProtocolError,
  UpstreamRateLimitedError,
  UpstreamTimeoutError,
  UpstreamUnauthorizedError,
  UpstreamUnavailableError
} from '../errors.ts'
import type { Clock } from '../interface/clock.ts'
import type { AbortOptions } from '../interface/common.ts'
import type {
  FetchBlobOptions,
  ManifestHead,
  ManifestRequestOptions,
  ManifestResponse,
  Upstream
} from '../interface/upstream.ts'
import { selfDescribedMediaType } from '../oci/manifest.ts'
import { DEFAULT_MANIFEST_ACCEPT } from '../oci/media-types.ts'
import { type Response, readCapped } from './http-body.ts'
import { RegistryAuth } from './registry-auth.ts'

/** Redirects followed per request: registries send blobs to S3 or a CDN with one or two hops. */
const MAX_REDIRECTS = 5
/** Longest `Retry-After` honoured: a registry asking for minutes is better treated as failing. */
const MAX_RETRY_AFTER = 10 * second
/** First backoff between retries; doubles with jitter. */
const RETRY_MIN_TIMEOUT = 100
const RETRY_MAX_TIMEOUT = 5 * second

const REDIRECTS = new Set([301, 302, 303, 307, 308])
const RETRYABLE_CODES = new Set(['UPSTREAM_UNAVAILABLE', 'UPSTREAM_RATE_LIMITED'])
const TIMEOUT_ERRORS = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT'])
const CONNECTION_ERRORS = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH'
])

/** How long a 429 asked us to wait, attached to the error that carries it. */
const retryAfterOf = new WeakMap<object, number>()

export interface RegistryUpstreamComponents {
  logger: Logger
  /** For token expiry; the wall clock by default. */
  clock?: Clock
}

export interface RegistryUpstreamInit {
  /** The registry host as it appears in image references, e.g. `docker.io`. */
  name: string
  /** Base URL requests go to, e.g. `https://registry-1.docker.io` or `http://127.0.0.1:5000`. */
  url: string
  /** Basic credentials: sent to the token realm, or to the registry on a `Basic` challenge. */
  username?: string
  password?: string
  /** A static bearer token sent with every request instead of the challenge flow. */
  token?: string
  /** Time to open a connection. */
  connectTimeoutMs: number
  /** Time until response headers arrive. */
  responseTimeoutMs: number
  /** Time a body may go without bytes. */
  bodyTimeoutMs: number
  /** Retries of one request on 5xx, 429 and connection errors. */
  retries: number
  /** Replaces the agent this upstream would create (tests, shared pools); not closed by `close()`. */
  dispatcher?: Dispatcher
}

interface Exchange {
  method: 'GET' | 'HEAD'
  /** Path below the base URL, starting with `/v2/`. */
  path: string
  headers: Record<string, string>
  repository: string
  /** What is asked for, for messages: `manifest app:latest` or `blob app@sha256:...`. */
  what: string
}

/**
 * An OCI distribution registry over HTTP (API v2): manifests and blobs with bearer-token or
 * basic auth, manual redirects that drop credentials when the host changes, and retries with
 * exponential backoff on 5xx, 429 and dropped connections. Every failure is a typed error
 * naming the registry, the repository and the reference.
 */
export class RegistryUpstream implements Upstream {
  readonly kind = 'registry' as const
  readonly name: string
  readonly credentialed: boolean
  readonly #log: Logger
  readonly #clock: Clock
  readonly #base: URL
  readonly #init: RegistryUpstreamInit
  readonly #dispatcher: Dispatcher
  /** Only the agent we created is ours to close. */
  readonly #ownAgent: Agent | undefined
  readonly #auth: RegistryAuth

  constructor(components: RegistryUpstreamComponents, init: RegistryUpstreamInit) {
    this.name = init.name
    // Known before any request: a repository that does not challenge is still treated as private
    // (a false positive costs peers without the manifest a trip to the registry, nothing more).
    this.credentialed =
      init.token !== undefined || (init.username !== undefined && init.password !== undefined)
    this.#init = init
    this.#log = components.logger.child({ component: 'registry-upstream', registry: init.name })
    this.#clock = components.clock ?? systemClock
    this.#base = new URL(init.url)
    if (init.dispatcher) {
      this.#dispatcher = init.dispatcher
    } else {
      this.#ownAgent = new Agent({
        connect: { timeout: init.connectTimeoutMs },
        headersTimeout: init.responseTimeoutMs,
        bodyTimeout: init.bodyTimeoutMs
      })
      this.#dispatcher = this.#ownAgent
    }
    this.#auth = new RegistryAuth(
      {
        dispatcher: this.#dispatcher,
        clock: this.#clock,
        logger: this.#log,
        where: (what) => this.#where(what),
        statusError: (res, what) => this.#statusError(res, what)
      },
      init
    )
  }

  async getManifest(
    repository: string,
    reference: string,
    options: ManifestRequestOptions = {}
  ): Promise<ManifestResponse> {
    const expected = referenceDigest(reference)
    const what = `manifest ${repository}${expected ? '@' : ':'}${reference}`
    return this.#withRetries(what, options.signal, async () => {
      const res = await this.#exchange(
        this.#manifestExchange('GET', repository, reference, what, options),
        options.signal
      )
      if (res.statusCode !== 200) throw await this.#statusError(res, what)
      const declared = contentLength(res)
      if (declared !== undefined && declared > MAX_MANIFEST_SIZE) {
        await res.body.dump()
        throw new UpstreamProtocolError(
          `${this.#where(what)}: manifest of ${declared} bytes exceeds the limit`
        )
      }
      const bytes = await readCapped(res, MAX_MANIFEST_SIZE, () => this.#where(what))
      const digest = digestOf(bytes)
      if (expected && digest !== expected) {
        throw new DigestMismatchError(`${this.#where(what)}: manifest bytes hash to ${digest}`)
      }
      const claimed = header(res, 'docker-content-digest')
      if (claimed && isDigest(claimed) && claimed !== digest) {
        throw new DigestMismatchError(
          `${this.#where(what)}: Docker-Content-Digest says ${claimed} but the bytes hash to ${digest}`
        )
      }
      const mediaType = header(res, 'content-type') || selfDescribedMediaType(bytes)
      return { digest, mediaType, size: bytes.length, bytes }
    })
  }

  async headManifest(
    repository: string,
    reference: string,
    options: ManifestRequestOptions = {}
  ): Promise<ManifestHead> {
    const expected = referenceDigest(reference)
    const what = `manifest ${repository}${expected ? '@' : ':'}${reference}`
    const head = await this.#withRetries(what, options.signal, async () => {
      const res = await this.#exchange(
        this.#manifestExchange('HEAD', repository, reference, what, options),
        options.signal
      )
      await res.body.dump()
      if (res.statusCode !== 200) throw await this.#statusError(res, what)
      const digest = header(res, 'docker-content-digest')
      const mediaType = header(res, 'content-type')
      const size = contentLength(res)
      if (!digest || !isDigest(digest) || !mediaType || size === undefined) return undefined
      if (expected && digest !== expected) {
        throw new DigestMismatchError(`${this.#where(what)}: the registry names it ${digest}`)
      }
      return { digest, mediaType, size }
    })
    if (head) return head
    // Without Docker-Content-Digest a HEAD says too little: the body is the only truth.
    this.#log.debug({ repository }, 'manifest HEAD lacks digest, type or size; falling back to GET')
    const { digest, mediaType, size } = await this.getManifest(repository, reference, options)
    return { digest, mediaType, size }
  }

  async statBlob(repository: string, digest: string, options: AbortOptions = {}): Promise<{ size: number }> {
    parseDigest(digest)
    const what = `blob ${repository}@${digest}`
    return this.#withRetries(what, options.signal, async () => {
      const res = await this.#exchange(
        { method: 'HEAD', path: blobPath(repository, digest), headers: {}, repository, what },
        options.signal
      )
      await res.body.dump()
      if (res.statusCode !== 200) throw await this.#statusError(res, what)
      const size = contentLength(res)
      if (size === undefined)
        throw new UpstreamProtocolError(`${this.#where(what)}: HEAD without Content-Length`)
      return { size }
    })
  }

  async fetchBlob(repository: string, digest: string, options: FetchBlobOptions = {}): Promise<Uint8Array> {
    parseDigest(digest)
    const { range } = options
    const what = range
      ? `blob ${repository}@${digest} bytes ${range.start}-${range.end}`
      : `blob ${repository}@${digest}`
    if (range) {
      if (!Number.isSafeInteger(range.start) || !Number.isSafeInteger(range.end) || range.start < 0) {
        throw new RangeNotSatisfiableError(`${this.#where(what)}: invalid range`)
      }
      if (range.end < range.start)
        throw new RangeNotSatisfiableError(`${this.#where(what)}: end before start`)
      if (range.end === range.start) return new Uint8Array(0)
    }
    const headers: Record<string, string> = { 'accept-encoding': 'identity' }
    if (range) headers.range = `bytes=${range.start}-${range.end - 1}`
    return this.#withRetries(what, options.signal, async () => {
      const res = await this.#exchange(
        { method: 'GET', path: blobPath(repository, digest), headers, repository, what },
        options.signal
      )
      if (res.statusCode === 206 && range) {
        const start = contentRangeStart(header(res, 'content-range'))
        if (start !== range.start) {
          await res.body.dump()
          throw new UpstreamProtocolError(
            `${this.#where(what)}: 206 with Content-Range "${header(res, 'content-range') ?? ''}"`
          )
        }
        return this.#readExactly(res, 0, range.end - range.start, what, 'forbidden', options.into)
      }
      if (res.statusCode === 200) {
        if (range) {
          return this.#readExactly(
            res,
            range.start,
            range.end - range.start,
            what,
            'may-follow',
            options.into
          )
        }
        const length = contentLength(res)
        if (length === undefined) return readCapped(res, Number.MAX_SAFE_INTEGER, () => this.#where(what))
        return this.#readExactly(res, 0, length, what, 'forbidden')
      }
      throw await this.#statusError(res, what)
    })
  }

  /** Closes the connection pool this upstream created. */
  async close(): Promise<void> {
    await this.#ownAgent?.close()
  }

  #manifestExchange(
    method: 'GET' | 'HEAD',
    repository: string,
    reference: string,
    what: string,
    options: ManifestRequestOptions
  ): Exchange {
    const accept = options.accept && options.accept.length > 0 ? options.accept : DEFAULT_MANIFEST_ACCEPT
    return {
      method,
      path: `/v2/${repository}/manifests/${reference}`,
      headers: { accept: accept.join(', ') },
      repository,
      what
    }
  }

  #where(what: string): string {
    return `registry ${this.name}: ${what}`
  }

  /**
   * Runs one attempt after another until it succeeds, fails for good, or retries run out.
   * Every error leaving here is a typed Shoal error.
   */
  async #withRetries<T>(
    what: string,
    signal: AbortSignal | undefined,
    attempt: () => Promise<T>
  ): Promise<T> {
    let last: ShoalError | undefined
    try {
      return await pRetry(
        async () => {
          try {
            return await attempt()
          } catch (err) {
            const e = this.#classify(err, what, signal)
            last = e
            if (e.code === 'ABORTED' || !RETRYABLE_CODES.has(e.code)) throw new StopRetrying(e)
            throw e
          }
        },
        {
          retries: this.#init.retries,
          factor: 2,
          minTimeout: RETRY_MIN_TIMEOUT,
          maxTimeout: RETRY_MAX_TIMEOUT,
          randomize: true,
          signal,
          onFailedAttempt: async (e) => {
            if (e.retriesLeft <= 0) return
            this.#log.warn(
              {
                attempt: e.attemptNumber,
                retriesLeft: e.retriesLeft,
                code: (e as Partial<ShoalError>).code,
                what
              },
              'upstream request failed, retrying'
            )
            const wait = retryAfterOf.get(e)
            if (wait) await sleep(wait, undefined, { signal })
          }
        }
      )
    } catch (err) {
      if (signal?.aborted) throw new AbortedError(`${this.#where(what)}: aborted`, { cause: err })
      throw last ?? this.#classify(err, what, signal)
    }
  }

  /** Maps whatever an attempt threw to the typed error the caller sees. */
  #classify(err: unknown, what: string, signal: AbortSignal | undefined): ShoalError {
    if (signal?.aborted) return new AbortedError(`${this.#where(what)}: aborted`, { cause: err })
    if (err instanceof ShoalError) return err
    const code = errorCode(err)
    const detail = err instanceof Error ? err.message : String(err)
    if (code && TIMEOUT_ERRORS.has(code)) {
      return new UpstreamTimeoutError(`${this.#where(what)}: ${detail}`, { cause: err })
    }
    if (code && CONNECTION_ERRORS.has(code)) {
      return new UpstreamUnavailableError(`${this.#where(what)}: ${detail}`, { cause: err })
    }
    if (code?.startsWith('UND_ERR_')) {
      return new UpstreamProtocolError(`${this.#where(what)}: ${detail}`, { cause: err })
    }
    return new UpstreamUnavailableError(`${this.#where(what)}: ${detail}`, { cause: err })
  }

  /** The error for an answer that is not the one wanted; consumes the body. */
  async #statusError(res: Response, what: string): Promise<ShoalError> {
    const status = res.statusCode
    const detail = await errorDetail(res)
    const msg = `${this.#where(what)}: HTTP ${status}${detail ? ` (${detail})` : ''}`
    if (status === 401 || status === 403) return new UpstreamUnauthorizedError(msg)
    if (status === 404) return new UpstreamNotFoundError(msg)
    if (status === 416) return new SizeMismatchError(`${msg}: range beyond the blob`)
    if (status === 429) {
      const err = new UpstreamRateLimitedError(msg)
      retryAfterOf.set(err, retryAfterMs(header(res, 'retry-after'), this.#clock.now()))
      return err
    }
    if (status >= 500) return new UpstreamUnavailableError(msg)
    return new UpstreamProtocolError(msg)
  }

  /**
   * One request with auth and redirects: answers one auth challenge, follows up to
   * MAX_REDIRECTS hops and sends credentials only to the registry's own origin.
   */
  async #exchange(ex: Exchange, signal: AbortSignal | undefined): Promise<Response> {
    const start = new URL(this.#base.pathname.replace(/\/$/, '') + ex.path, this.#base)
    let url = start
    let challenged = false
    let hops = 0
    for (;;) {
      const headers = { ...ex.headers }
      const own = url.origin === this.#base.origin
      if (own) {
        const auth = this.#auth.authorization(ex.repository)
        if (auth) headers.authorization = auth
      }
      const res = await request(url, {
        method: ex.method,
        headers,
        dispatcher: this.#dispatcher,
        signal,
        headersTimeout: this.#init.responseTimeoutMs,
        bodyTimeout: this.#init.bodyTimeoutMs
      })
      if (REDIRECTS.has(res.statusCode)) {
        await res.body.dump()
        const location = header(res, 'location')
        if (!location) throw new UpstreamProtocolError(`${this.#where(ex.what)}: redirect without Location`)
        if (++hops > MAX_REDIRECTS) {
          throw new UpstreamProtocolError(`${this.#where(ex.what)}: more than ${MAX_REDIRECTS} redirects`)
        }
        url = new URL(location, url)
        continue
      }
      if (res.statusCode === 401 && own && !challenged) {
        challenged = true
        const challenge = header(res, 'www-authenticate')
        await res.body.dump()
        if (challenge && (await this.#auth.answerChallenge(challenge, ex.repository, ex.what, signal))) {
          url = start
          hops = 0
          continue
        }
        throw new UpstreamUnauthorizedError(
          `${this.#where(ex.what)}: HTTP 401${this.#init.token || this.#init.username ? ' with our credentials' : ' and no credentials configured'}`
        )
      }
      return res
    }
  }

  /**
   * Reads `count` bytes starting `skip` bytes into the body into one buffer. With `rest` the
   * body may run on (a 200 to a Range request): reading stops once the range is in, so a
   * registry that ignores Range costs the bytes up to the range's end, not the whole blob.
   */
  async #readExactly(
    res: Response,
    skip: number,
    count: number,
    what: string,
    rest: 'may-follow' | 'forbidden',
    into?: Uint8Array
  ): Promise<Uint8Array> {
    if (count > MAX_BLOB_SIZE) {
      await res.body.dump()
      throw new UpstreamProtocolError(`${this.#where(what)}: ${count} bytes is beyond any blob Shoal accepts`)
    }
    const out = into && into.byteLength >= count ? into.subarray(0, count) : new Uint8Array(count)
    // Offset of the next chunk's first byte relative to the start of the wanted bytes.
    let pos = -skip
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      const from = Math.max(0, -pos)
      const to = Math.min(chunk.length, count - pos)
      if (to > from) out.set(chunk.subarray(from, to), pos + from)
      pos += chunk.length
      if (pos >= count && rest === 'may-follow') break
      if (pos > count) break
    }
    if (!res.body.destroyed) res.body.destroy()
    if (pos > count && rest === 'forbidden') {
      throw new SizeMismatchError(`${this.#where(what)}: more than the ${count} bytes asked for`)
    }
    if (pos < count)
      throw new SizeMismatchError(`${this.#where(what)}: got ${Math.max(0, pos)} of ${count} bytes`)
    return out
  }
}

function errorCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string') return code
  }
  return undefined
}

/** The digest a reference names, or undefined for a tag; refuses digests Shoal cannot verify. */
function referenceDigest(reference: string): string | undefined {
  return reference.includes(':') ? parseDigest(reference) : undefined
}

function blobPath(repository: string, digest: string): string {
  return `/v2/${repository}/blobs/${digest}`
}

function header(res: Response, name: string): string | undefined {
  const v = res.headers[name]
  const s = Array.isArray(v) ? v[0] : v
  return s === undefined || s === '' ? undefined : s
}

function contentLength(res: Response): number | undefined {
  const v = header(res, 'content-length')
  if (v === undefined || !/^\d+$/.test(v)) return undefined
  return Number(v)
}

function contentRangeStart(v: string | undefined): number | undefined {
  const m = v ? /^bytes\s+(\d+)-(\d+)\/(\d+|\*)$/i.exec(v.trim()) : null
  return m?.[1] === undefined ? undefined : Number(m[1])
}

/** Milliseconds a `Retry-After` asks for (seconds or an HTTP date), capped. */
function retryAfterMs(v: string | undefined, now: number): number {
  if (!v) return 0
  const ms = /^\d+$/.test(v.trim()) ? Number(v.trim()) * second : Date.parse(v) - now
  return Number.isFinite(ms) ? Math.max(0, Math.min(ms, MAX_RETRY_AFTER)) : 0
}

/** A short reason from a registry error body (`{"errors":[{"code","message"}]}`), if any. */
async function errorDetail(res: Response): Promise<string | undefined> {
  try {
    const text = Buffer.from(await readCapped(res, 16 * 1024, () => '')).toString('utf8')
    const parsed = JSON.parse(text) as { errors?: { code?: unknown; message?: unknown }[] }
    const first = parsed.errors?.[0]
    if (!first) return undefined
    return [first.code, first.message].filter((x) => typeof x === 'string').join(': ') || undefined
  } catch {
    if (!res.body.destroyed) res.body.destroy()
    return undefined
  }
}
