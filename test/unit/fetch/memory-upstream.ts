import { digestOf } from '../../../src/content/digest.ts'
import { SizeMismatchError, UpstreamNotFoundError, UpstreamUnavailableError } from '../../../src/errors.ts'
import type {
  FetchBlobOptions,
  ManifestHead,
  ManifestRequestOptions,
  ManifestResponse,
  Upstream,
  UpstreamResolver
} from '../../../src/interface/upstream.ts'

/**
 * An in-memory seed for unit tests: records every blob request and how many ran at once, and
 * can be told to corrupt or fail.
 */
export class MemoryUpstream implements Upstream, UpstreamResolver {
  readonly kind = 'registry' as const
  readonly name = 'memory.test'
  /** As if credentials were configured for it: what it serves is private. */
  credentialed = false
  readonly blobs = new Map<string, Uint8Array>()
  readonly manifests = new Map<string, { bytes: Uint8Array; mediaType: string }>()
  readonly tags = new Map<string, string>()
  /** Every fetchBlob: digest and range start (or -1 for the whole blob). */
  readonly requests: { digest: string; start: number }[] = []
  running = 0
  maxRunning = 0
  /** Called before a fetch answers: throw to fail it, or return bytes to replace the answer. */
  tamper?: (digest: string, start: number, data: Uint8Array) => Uint8Array | undefined
  delayMs = 0

  resolve(): Upstream {
    return this
  }

  addBlob(bytes: Uint8Array): string {
    const d = digestOf(bytes)
    this.blobs.set(d, bytes)
    return d
  }

  addManifest(tag: string, bytes: Uint8Array, mediaType: string): string {
    const d = digestOf(bytes)
    this.manifests.set(d, { bytes, mediaType })
    this.tags.set(tag, d)
    return d
  }

  async getManifest(
    _repo: string,
    reference: string,
    _o?: ManifestRequestOptions
  ): Promise<ManifestResponse> {
    const digest = this.tags.get(reference) ?? reference
    const m = this.manifests.get(digest)
    if (!m) throw new UpstreamNotFoundError(`manifest ${reference} not found`)
    return { digest, mediaType: m.mediaType, size: m.bytes.length, bytes: m.bytes }
  }

  async headManifest(repo: string, reference: string, o?: ManifestRequestOptions): Promise<ManifestHead> {
    const { digest, mediaType, size } = await this.getManifest(repo, reference, o)
    return { digest, mediaType, size }
  }

  async statBlob(_repo: string, digest: string): Promise<{ size: number }> {
    const b = this.blobs.get(digest)
    if (!b) throw new UpstreamNotFoundError(`blob ${digest} not found`)
    return { size: b.length }
  }

  async fetchBlob(_repo: string, digest: string, options: FetchBlobOptions = {}): Promise<Uint8Array> {
    const b = this.blobs.get(digest)
    if (!b) throw new UpstreamNotFoundError(`blob ${digest} not found`)
    const start = options.range?.start ?? 0
    const end = options.range?.end ?? b.length
    this.requests.push({ digest, start: options.range ? start : -1 })
    this.running++
    this.maxRunning = Math.max(this.maxRunning, this.running)
    try {
      if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs))
      options.signal?.throwIfAborted()
      if (end > b.length) throw new SizeMismatchError('range past the end')
      const data = b.slice(start, end)
      return this.tamper?.(digest, start, data) ?? data
    } finally {
      this.running--
    }
  }
}

/** A failure the tests inject. */
export const unavailable = () => new UpstreamUnavailableError('injected failure')
