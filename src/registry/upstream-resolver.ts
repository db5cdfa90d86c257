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

// An upstream replaced by a reload may still serve transfers begun with it: closed this much later.
const RETIRED_CLOSE_MS = 10 * 60 * 1000

/**
 * Maps a registry host to its upstream from the configuration: a configured entry wins, Docker
 * Hub's aliases share `registry-1.docker.io`, and any other host is reached at `https://<host>`
 * (`http://` for loopback). One instance per host, so token caches and connections are shared.
 */
export class StaticUpstreamResolver implements UpstreamResolver {
  readonly #components: StaticUpstreamResolverComponents
  #init: StaticUpstreamResolverInit
  /** Configured entries by lower-cased host: hosts are case-insensitive. */
  #entries: Map<string, UpstreamEntry>
  readonly #cache = new Map<string, ClosableUpstream>()
  /** Upstreams a reload replaced, with the timers that close them. */
  readonly #retired = new Map<ClosableUpstream, NodeJS.Timeout>()

  constructor(components: StaticUpstreamResolverComponents, init: StaticUpstreamResolverInit) {
    this.#components = components
    this.#init = init
    this.#entries = entriesOf(init)
  }

  /**
   * Takes new registries, credentials and timeouts (a reload). Hosts whose entry changed get a
   * new upstream at their next request; the old one keeps serving what already uses it and is
   * closed a while later. Returns the hosts replaced.
   */
  reconfigure(init: StaticUpstreamResolverInit): string[] {
    const timeoutsChanged =
      init.connectTimeoutMs !== this.#init.connectTimeoutMs ||
      init.responseTimeoutMs !== this.#init.responseTimeoutMs ||
      init.bodyTimeoutMs !== this.#init.bodyTimeoutMs ||
      init.retries !== this.#init.retries
    const entries = entriesOf(init)
    const replaced: string[] = []
    for (const [key, upstream] of this.#cache) {
      const same = JSON.stringify(this.#entries.get(key)) === JSON.stringify(entries.get(key))
      if (same && !timeoutsChanged) continue
      this.#cache.delete(key)
      replaced.push(key)
      const timer = setTimeout(() => {
        this.#retired.delete(upstream)
        void upstream.close().catch(() => undefined)
      }, RETIRED_CLOSE_MS)
      timer.unref()
      this.#retired.set(upstream, timer)
    }
    this.#init = init
    this.#entries = entries
    return replaced
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
    const all = [...this.#cache.values(), ...this.#retired.keys()]
    for (const timer of this.#retired.values()) clearTimeout(timer)
    this.#retired.clear()
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

function entriesOf(init: StaticUpstreamResolverInit): Map<string, UpstreamEntry> {
  return new Map(Object.entries(init.registries).map(([h, e]) => [h.toLowerCase(), e]))
}
