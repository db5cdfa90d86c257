import type { Logger } from 'pino'
import { type Dispatcher, request } from 'undici'
import { second } from '../constants.ts'
import { type ShoalError, UpstreamProtocolError } from '../errors.ts'
import type { Clock } from '../interface/clock.ts'
import { type Response, readCapped } from './http-body.ts'

/** Largest token-endpoint answer read. */
const MAX_TOKEN_BODY = 1024 * 1024
/** Tokens are refreshed this long before the registry says they expire. */
const TOKEN_EXPIRY_MARGIN = 10 * second
/** Lifetime assumed when the token endpoint gives none (the distribution spec's default). */
const DEFAULT_TOKEN_LIFETIME = 60 * second

interface CachedToken {
  value: string
  expiresAt: number
}

export interface RegistryAuthComponents {
  dispatcher: Dispatcher
  clock: Clock
  logger: Logger
  /** `registry <name>: <what>`, for messages. */
  where(what: string): string
  /** The typed error for an unexpected status. */
  statusError(res: Response, what: string): Promise<ShoalError>
}

export interface RegistryAuthInit {
  username?: string | undefined
  password?: string | undefined
  /** A static bearer token: sent always, no challenge answered. */
  token?: string | undefined
  responseTimeoutMs: number
  bodyTimeoutMs: number
}

/**
 * Credentials for one registry: a static bearer token, basic credentials, or bearer tokens
 * fetched from the realm a `WWW-Authenticate` challenge names (with the basic credentials, if
 * any), cached per scope until shortly before they expire, one request per scope at a time.
 */
export class RegistryAuth {
  readonly #c: RegistryAuthComponents
  readonly #init: RegistryAuthInit
  /** Bearer tokens by scope (`repository:app:pull`). */
  readonly #tokens = new Map<string, CachedToken>()
  /** Token requests in flight by scope, so parallel requests share one. */
  readonly #pendingTokens = new Map<string, Promise<CachedToken>>()
  /** The scope the registry's challenge named for each repository. */
  readonly #scopes = new Map<string, string>()
  /** Set once the registry answered with a `Basic` challenge. */
  #basic = false

  constructor(components: RegistryAuthComponents, init: RegistryAuthInit) {
    this.#c = components
    this.#init = init
  }

  /** The Authorization header for a request about `repository`, if we have credentials. */
  authorization(repository: string): string | undefined {
    if (this.#init.token) return `Bearer ${this.#init.token}`
    const scope = this.#scopes.get(repository) ?? defaultScope(repository)
    const token = this.#tokens.get(scope)
    if (token && token.expiresAt > this.#c.clock.now()) return `Bearer ${token.value}`
    if (this.#basic) return this.#basicCredentials()
    return undefined
  }

  #basicCredentials(): string | undefined {
    const { username, password } = this.#init
    if (username === undefined || password === undefined) return undefined
    return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`
  }

  /** Answers a 401's challenge; true when the request is worth repeating with new credentials. */
  async answerChallenge(
    challenge: string,
    repository: string,
    what: string,
    signal: AbortSignal | undefined
  ): Promise<boolean> {
    const { scheme, params } = parseChallenge(challenge)
    if (scheme === 'basic') {
      if (this.#basic || !this.#basicCredentials()) return false
      this.#basic = true
      return true
    }
    if (scheme !== 'bearer' || this.#init.token) return false
    const realm = params.get('realm')
    if (!realm) throw new UpstreamProtocolError(`${this.#c.where(what)}: Bearer challenge without realm`)
    const scope = params.get('scope') ?? defaultScope(repository)
    this.#scopes.set(repository, scope)
    let pending = this.#pendingTokens.get(scope)
    if (!pending) {
      pending = this.#fetchToken(realm, params.get('service'), scope, what, signal)
      this.#pendingTokens.set(scope, pending)
      pending.then(
        () => this.#pendingTokens.delete(scope),
        () => this.#pendingTokens.delete(scope)
      )
    }
    this.#tokens.set(scope, await pending)
    return true
  }

  async #fetchToken(
    realm: string,
    service: string | undefined,
    scope: string,
    what: string,
    signal: AbortSignal | undefined
  ): Promise<CachedToken> {
    const url = new URL(realm)
    if (service) url.searchParams.set('service', service)
    for (const s of scope.split(' ').filter(Boolean)) url.searchParams.append('scope', s)
    const headers: Record<string, string> = {}
    const basic = this.#basicCredentials()
    if (basic) headers.authorization = basic
    const res = await request(url, {
      method: 'GET',
      headers,
      dispatcher: this.#c.dispatcher,
      signal,
      headersTimeout: this.#init.responseTimeoutMs,
      bodyTimeout: this.#init.bodyTimeoutMs
    })
    const tokenWhat = `${what} (token from ${url.origin})`
    if (res.statusCode !== 200) throw await this.#c.statusError(res, tokenWhat)
    const body = await readCapped(res, MAX_TOKEN_BODY, () => this.#c.where(tokenWhat))
    let parsed: { token?: unknown; access_token?: unknown; expires_in?: unknown }
    try {
      parsed = JSON.parse(Buffer.from(body).toString('utf8'))
    } catch (err) {
      throw new UpstreamProtocolError(`${this.#c.where(tokenWhat)}: answer is not JSON`, { cause: err })
    }
    const value = typeof parsed.token === 'string' ? parsed.token : parsed.access_token
    if (typeof value !== 'string' || value === '') {
      throw new UpstreamProtocolError(`${this.#c.where(tokenWhat)}: answer has no token`)
    }
    const lifetime =
      typeof parsed.expires_in === 'number' && parsed.expires_in > 0
        ? parsed.expires_in * second
        : DEFAULT_TOKEN_LIFETIME
    const margin = Math.min(TOKEN_EXPIRY_MARGIN, lifetime / 2)
    this.#c.logger.debug({ scope, lifetime }, 'got registry token')
    return { value, expiresAt: this.#c.clock.now() + lifetime - margin }
  }
}

function defaultScope(repository: string): string {
  return `repository:${repository}:pull`
}

/** Parses `Bearer realm="...",service="...",scope="..."`. */
function parseChallenge(v: string): { scheme: string; params: Map<string, string> } {
  const m = /^\s*(\S+)\s*(.*)$/.exec(v)
  const params = new Map<string, string>()
  for (const p of (m?.[2] ?? '').matchAll(/([A-Za-z_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g)) {
    if (p[1]) params.set(p[1].toLowerCase(), p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? ''))
  }
  return { scheme: (m?.[1] ?? '').toLowerCase(), params }
}
