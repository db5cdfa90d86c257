import type { Logger } from 'pino'
import { accessKey } from '../content/access.ts'
import { isDigest, parseDigest } from '../content/digest.ts'
import type { AbortOptions } from '../interface/common.ts'
import type { BlobStore } from '../interface/store.ts'
import type { ManifestHead, UpstreamResolver } from '../interface/upstream.ts'
import { type ParsedManifest, parseManifest } from '../oci/manifest.ts'
import { putVerifiedBlob } from './put-blob.ts'

/** What is known about a blob from a manifest that named it: its size, type and home. */
export interface BlobHint {
  size: number
  mediaType: string
  registry: string
  repository: string
  /** The access key of that manifest (content/access.ts): how peers holding it privately serve it. */
  accessKey: Uint8Array
}

export interface ManifestRequest extends AbortOptions {
  registry: string
  repository: string
  /** A tag or a digest. */
  reference: string
  /** Forwarded verbatim to the upstream. */
  accept?: string[]
}

export interface ManifestResult extends ManifestHead {
  bytes: Uint8Array
  /** Where the bytes came from: `store` when served by digest from this node. */
  from: 'store' | 'upstream'
}

export interface ManifestResolverComponents {
  store: BlobStore
  upstreams: UpstreamResolver
  logger: Logger
}

export interface ManifestResolverInit {
  /** Blob hints remembered (oldest forgotten first). */
  hintCapacity?: number
}

/**
 * Manifests and indexes: tags always go to the seed (tags are mutable and the registry is their
 * authority); a digest is served from the store when present, since its digest verifies it.
 * Every manifest that passes through is kept in the store and its descriptors remembered, so a
 * later blob request knows the blob's size without asking the seed, and the manifest's access key.
 * A manifest from a registry we hold credentials for is private in the store: never served to peers.
 */
export class ManifestResolver {
  readonly #c: ManifestResolverComponents
  readonly #hints = new Map<string, BlobHint>()
  readonly #capacity: number
  readonly #log: Logger

  constructor(components: ManifestResolverComponents, init: ManifestResolverInit = {}) {
    this.#c = components
    this.#capacity = init.hintCapacity ?? 50_000
    this.#log = components.logger.child({ component: 'manifests' })
  }

  /** GET: the manifest's exact bytes and media type. */
  async get(req: ManifestRequest): Promise<ManifestResult> {
    if (isDigest(req.reference)) {
      const local = await this.#fromStore(req.reference, req)
      if (local) return local
    } else if (req.reference.includes(':')) {
      parseDigest(req.reference) // a digest Shoal cannot verify: refuse with a clear error
    }
    const upstream = this.#c.upstreams.resolve(req.registry)
    const m = await upstream.getManifest(req.repository, req.reference, {
      accept: req.accept,
      signal: req.signal
    })
    this.#learn(m.bytes, m.mediaType, req)
    await putVerifiedBlob(
      this.#c.store,
      m.digest,
      m.bytes,
      {
        mediaType: m.mediaType,
        source: upstream.kind === 'registry' ? 'registry' : 'oci-layout',
        private: upstream.credentialed === true
      },
      req
    )
    return { ...m, from: 'upstream' }
  }

  /** HEAD: digest, media type and size, from the store for a digest we hold. */
  async head(req: ManifestRequest): Promise<ManifestHead> {
    if (isDigest(req.reference)) {
      const info = await this.#c.store.stat(req.reference, req)
      if (info?.complete && info.mediaType) {
        return { digest: info.digest, mediaType: info.mediaType, size: info.size }
      }
    }
    const upstream = this.#c.upstreams.resolve(req.registry)
    return upstream.headManifest(req.repository, req.reference, { accept: req.accept, signal: req.signal })
  }

  /** Parses a manifest (throws typed errors on anything malformed) and remembers its blobs. */
  parse(bytes: Uint8Array, mediaType: string, at: { registry: string; repository: string }): ParsedManifest {
    const parsed = parseManifest(bytes, mediaType)
    if (parsed.kind === 'manifest') {
      const key = accessKey(bytes)
      for (const d of [parsed.config, ...parsed.layers]) {
        this.#remember(d.digest, { size: d.size, mediaType: d.mediaType, ...at, accessKey: key })
      }
    }
    return parsed
  }

  /** What a manifest said about this blob, if one passed through. */
  hint(digest: string): BlobHint | undefined {
    return this.#hints.get(digest)
  }

  async #fromStore(digest: string, req: ManifestRequest): Promise<ManifestResult | undefined> {
    const info = await this.#c.store.stat(digest, req)
    if (!info?.complete || !info.mediaType) return undefined
    const bytes = await this.#c.store.read(digest, { start: 0, end: info.size }, req)
    await this.#c.store.touch(digest)
    return { digest, mediaType: info.mediaType, size: info.size, bytes, from: 'store' }
  }

  #learn(bytes: Uint8Array, mediaType: string, at: { registry: string; repository: string }): void {
    try {
      this.parse(bytes, mediaType, at)
    } catch (err) {
      // The mirror passes through artifacts it cannot parse (their digest still verifies them);
      // it only learns nothing about their blobs.
      this.#log.debug({ err: (err as Error).message }, 'manifest not parsed for hints')
    }
  }

  #remember(digest: string, hint: BlobHint): void {
    this.#hints.delete(digest)
    this.#hints.set(digest, hint)
    if (this.#hints.size > this.#capacity) {
      const oldest = this.#hints.keys().next().value
      if (oldest !== undefined) this.#hints.delete(oldest)
    }
  }
}
