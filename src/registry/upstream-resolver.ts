import type { Logger } from 'pino'
import type { Upstream, UpstreamResolver } from '../interface/upstream.ts'
import { OciLayoutUpstream } from './oci-layout-upstream.ts'
import { RegistryUpstream } from './registry-upstream.ts'

/** Docker Hub's names in image references, all served by one registry. */
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io'])
const DOCKER_HUB_NAME = 'docker.io'
const DOCKER_HUB_URL = 'https://registry-1.docker.io'
/** Hosts reached over plain HTTP when not configured: loopback registries rarely have TLS. */
const PLAIN_HTTP_HOST = /^(localhost|127(?:\.\d{1,3}){3}|\[::1\])(?::\d+)?$/i

export interface StaticUpstreamResolverComponents {
  logger: Logger
}

/** One configured upstream: a registry URL or an OCI layout directory, with credentials. */
export interface UpstreamEntry {
  url?: string
  layout?: string
  username?: string
  password?: string
  token?: string
}

export interface StaticUpstreamResolverInit {
  /** Upstreams by host as it appears in image references. */
  registries: Record<string, UpstreamEntry>
  connectTimeoutMs: number
  responseTimeoutMs: number
  bodyTimeoutMs: number
  retries: number
}

type ClosableUpstream = Upstream & { close(): Promise<void> }

/**
 * Maps a registry host to its upstream from the configuration: a configured entry wins, Docker
 * Hub's aliases share `registry-1.docker.io`, and any other host is reached at `https://<host>`
 * (`http://` for loopback). One instance per host, so token caches and connections are shared.
 */
export class StaticUpstreamResolver implements UpstreamResolver {
  readonly #components: StaticUpstreamResolverComponents
  readonly #init: StaticUpstreamResolverInit
  /** Configured entries by lower-cased host: hosts are case-insensitive. */
  readonly #entries: Map<string, UpstreamEntry>
  readonly #cache = new Map<string, ClosableUpstream>()

  constructor(components: StaticUpstreamResolverComponents, init: StaticUpstreamResolverInit) {
    this.#components = components
    this.#init = init
    this.#entries = new Map(Object.entries(init.registries).map(([h, e]) => [h.toLowerCase(), e]))
  }

  resolve(registry: string): Upstream {
    const host = registry.toLowerCase()
    const hub = !this.#entries.has(host) && DOCKER_HUB_ALIASES.has(host)
    const key = hub ? DOCKER_HUB_NAME : host
    let upstream = this.#cache.get(key)
    if (!upstream) {
      upstream = this.#create(key, hub)
      this.#cache.set(key, upstream)
    }
    return upstream
  }

  /** Closes every upstream created so far. */
  async close(): Promise<void> {
    const all = [...this.#cache.values()]
    this.#cache.clear()
    await Promise.allSettled(all.map((u) => u.close()))
  }

  #create(host: string, hub: boolean): ClosableUpstream {
    const entry = this.#entries.get(host)
    const { logger } = this.#components
    if (entry?.layout) return new OciLayoutUpstream({ logger }, { name: host, dir: entry.layout })
    const url =
      entry?.url ?? (hub ? DOCKER_HUB_URL : `${PLAIN_HTTP_HOST.test(host) ? 'http' : 'https'}://${host}`)
    return new RegistryUpstream(
      { logger },
      {
        name: host,
        url,
        username: entry?.username,
        password: entry?.password,
        token: entry?.token,
        connectTimeoutMs: this.#init.connectTimeoutMs,
        responseTimeoutMs: this.#init.responseTimeoutMs,
        bodyTimeoutMs: this.#init.bodyTimeoutMs,
        retries: this.#init.retries
      }
    )
  }
}
