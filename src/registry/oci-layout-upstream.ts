import { open, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { MAX_MANIFEST_SIZE } from '../constants.ts'
import { digestHex, digestOf, parseDigest, verifyDigest } from '../content/digest.ts'
import {
  RangeNotSatisfiableError,
  SizeMismatchError,
  UpstreamNotFoundError,
  UpstreamProtocolError
} from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import type {
  FetchBlobOptions,
  ManifestHead,
  ManifestRequestOptions,
  ManifestResponse,
  Upstream
} from '../interface/upstream.ts'
import { selfDescribedMediaType } from '../oci/manifest.ts'

/** The annotation OCI layouts (umoci, skopeo) use to name a manifest's tag. */
const REF_NAME = 'org.opencontainers.image.ref.name'

export interface OciLayoutUpstreamComponents {
  logger: Logger
}

export interface OciLayoutUpstreamInit {
  /** The registry host (or a name of its own) this layout stands in for. */
  name: string
  /** The layout directory: `oci-layout`, `index.json`, `blobs/sha256/<hex>`. */
  dir: string
}

interface Descriptor {
  digest: string
  mediaType?: string
  size?: number
  annotations?: Record<string, string>
}

/**
 * An OCI image layout directory as a seed, for air-gapped sites. A layout holds one repository,
 * so the repository argument is ignored; tags resolve through the `ref.name` annotations of
 * `index.json`, digests read `blobs/sha256/<hex>` directly.
 */
export class OciLayoutUpstream implements Upstream {
  readonly kind = 'oci-layout' as const
  readonly name: string
  readonly #dir: string
  readonly #log: Logger

  constructor(components: OciLayoutUpstreamComponents, init: OciLayoutUpstreamInit) {
    this.name = init.name
    this.#dir = init.dir
    this.#log = components.logger.child({ component: 'oci-layout-upstream', layout: init.name })
  }

  async getManifest(
    repository: string,
    reference: string,
    options: ManifestRequestOptions = {}
  ): Promise<ManifestResponse> {
    options.signal?.throwIfAborted()
    const what = `manifest ${repository}${reference.includes(':') ? '@' : ':'}${reference}`
    const descriptor = reference.includes(':')
      ? await this.#byDigest(parseDigest(reference))
      : await this.#byTag(reference, what)
    const bytes = await this.#readBlob(descriptor.digest, what, MAX_MANIFEST_SIZE)
    verifyDigest(bytes, descriptor.digest, `${this.#where(what)}: manifest`)
    if (descriptor.size !== undefined && descriptor.size !== bytes.length) {
      throw new SizeMismatchError(
        `${this.#where(what)}: index.json says ${descriptor.size} bytes, the blob has ${bytes.length}`
      )
    }
    const mediaType = descriptor.mediaType ?? selfDescribedMediaType(bytes)
    return { digest: digestOf(bytes), mediaType, size: bytes.length, bytes }
  }

  async headManifest(
    repository: string,
    reference: string,
    options: ManifestRequestOptions = {}
  ): Promise<ManifestHead> {
    const { digest, mediaType, size } = await this.getManifest(repository, reference, options)
    return { digest, mediaType, size }
  }

  async statBlob(repository: string, digest: string, options: AbortOptions = {}): Promise<{ size: number }> {
    options.signal?.throwIfAborted()
    const path = this.#blobPath(digest)
    try {
      return { size: (await stat(path)).size }
    } catch (err) {
      throw this.#fsError(err, `blob ${repository}@${digest}`)
    }
  }

  async fetchBlob(repository: string, digest: string, options: FetchBlobOptions = {}): Promise<Uint8Array> {
    options.signal?.throwIfAborted()
    const path = this.#blobPath(digest)
    const { range } = options
    const what = range
      ? `blob ${repository}@${digest} bytes ${range.start}-${range.end}`
      : `blob ${repository}@${digest}`
    if (range && (range.start < 0 || range.end < range.start || !Number.isSafeInteger(range.end))) {
      throw new RangeNotSatisfiableError(`${this.#where(what)}: invalid range`)
    }
    let file: Awaited<ReturnType<typeof open>>
    try {
      file = await open(path, 'r')
    } catch (err) {
      throw this.#fsError(err, what)
    }
    try {
      const size = (await file.stat()).size
      const start = range?.start ?? 0
      const count = range ? range.end - range.start : size
      const out =
        options.into && options.into.byteLength >= count
          ? options.into.subarray(0, count)
          : new Uint8Array(count)
      let got = 0
      while (got < count) {
        options.signal?.throwIfAborted()
        const { bytesRead } = await file.read(out, got, count - got, start + got)
        if (bytesRead === 0) break
        got += bytesRead
      }
      if (got !== count) {
        throw new SizeMismatchError(
          `${this.#where(what)}: the blob has ${size} bytes, got ${got} of ${count}`
        )
      }
      return out
    } finally {
      await file.close()
    }
  }

  /** Nothing to release: files are opened per call. */
  async close(): Promise<void> {}

  #where(what: string): string {
    return `layout ${this.name} (${this.#dir}): ${what}`
  }

  #blobPath(digest: string): string {
    return join(this.#dir, 'blobs', 'sha256', digestHex(digest))
  }

  #fsError(err: unknown, what: string): Error {
    const code = (err as { code?: unknown }).code
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      return new UpstreamNotFoundError(`${this.#where(what)}: not in the layout`, { cause: err })
    }
    return new UpstreamProtocolError(
      `${this.#where(what)}: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err }
    )
  }

  async #readBlob(digest: string, what: string, cap: number): Promise<Uint8Array> {
    const path = this.#blobPath(digest)
    try {
      const { size } = await stat(path)
      if (size > cap) throw new UpstreamProtocolError(`${this.#where(what)}: ${size} bytes exceeds the limit`)
      return new Uint8Array(await readFile(path))
    } catch (err) {
      if (err instanceof UpstreamProtocolError) throw err
      throw this.#fsError(err, what)
    }
  }

  async #index(): Promise<Descriptor[]> {
    let raw: string
    try {
      raw = await readFile(join(this.#dir, 'index.json'), 'utf8')
    } catch (err) {
      throw this.#fsError(err, 'index.json')
    }
    let parsed: unknown
    try {
      parsed = JSON.parse(raw)
    } catch (err) {
      throw new UpstreamProtocolError(`${this.#where('index.json')}: not JSON`, { cause: err })
    }
    const manifests = (parsed as { manifests?: unknown } | null)?.manifests
    if (!Array.isArray(manifests)) {
      throw new UpstreamProtocolError(`${this.#where('index.json')}: no manifests array`)
    }
    return manifests.filter(
      (m): m is Descriptor => typeof m === 'object' && m !== null && typeof m.digest === 'string'
    )
  }

  async #byDigest(digest: string): Promise<Descriptor> {
    // index.json may know the media type; the blob alone is enough otherwise.
    try {
      const found = (await this.#index()).find((d) => d.digest === digest)
      if (found) return found
    } catch (err) {
      this.#log.debug({ err }, 'index.json unreadable; resolving the digest from blobs alone')
    }
    return { digest }
  }

  async #byTag(tag: string, what: string): Promise<Descriptor> {
    const manifests = await this.#index()
    const named = manifests.filter((d) => d.annotations?.[REF_NAME] !== undefined)
    const found = named.find((d) => d.annotations?.[REF_NAME] === tag)
    if (found) {
      parseDigest(found.digest)
      return found
    }
    // An unnamed single-image layout answers to `latest`, as `docker pull` would.
    const only = manifests[0]
    if (tag === 'latest' && named.length === 0 && manifests.length === 1 && only) {
      parseDigest(only.digest)
      return only
    }
    throw new UpstreamNotFoundError(`${this.#where(what)}: no manifest with this tag in index.json`)
  }
}
