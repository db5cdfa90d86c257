import type { Logger } from 'pino'
import { accessKey } from '../content/access.ts'
import { InvalidManifestError } from '../errors.ts'
import type { Clock } from '../interface/clock.ts'
import type { AbortOptions } from '../interface/common.ts'
import type { PieceSource } from '../interface/store.ts'
import type { Descriptor } from '../oci/manifest.ts'
import { defaultPlatform, type Platform, selectManifest } from '../oci/platform.ts'
import { parseReference } from '../oci/reference.ts'
import type { BlobFetcher } from './blob-fetcher.ts'
import type { ManifestResolver } from './manifests.ts'
import type { BlobProgress } from './transfer.ts'

/** Where bytes of a pull came from: the local store, the seed registry, a layout, peers. */
export type ByteOrigin = 'local' | PieceSource

/** Typed progress events of a pull, sent as NDJSON by the socket API. */
export type PullEvent =
  | {
      type: 'resolved'
      reference: string
      manifestDigest: string
      mediaType: string
      platform?: string
      blobs: { digest: string; size: number; mediaType: string; kind: 'config' | 'layer' }[]
    }
  | { type: 'progress'; digest: string; bytesHeld: number; size: number }
  | { type: 'blob-done'; digest: string; size: number; origin: Partial<Record<ByteOrigin, number>> }
  | {
      type: 'done'
      reference: string
      manifestDigest: string
      bytes: Partial<Record<ByteOrigin, number>>
      totalBytes: number
      durationMs: number
    }

export interface PullOptions extends AbortOptions {
  platform?: Platform
  onEvent?: (e: PullEvent) => void
}

export interface PullResult {
  manifestDigest: string
  /** The index the reference named, when it named one (the manifest is this platform's). */
  indexDigest?: string
  config: Descriptor
  layers: Descriptor[]
  bytes: Partial<Record<ByteOrigin, number>>
}

export interface ImagePullerComponents {
  manifests: ManifestResolver
  fetcher: BlobFetcher
  clock: Clock
  logger: Logger
}

export interface ImagePullerInit {
  platform?: Platform
}

/**
 * Pulls a whole image into the store: resolves the reference at the seed, picks this node's
 * platform from an index, then brings in the config and every layer in parallel, each verified.
 */
export class ImagePuller {
  readonly #c: ImagePullerComponents
  readonly #platform: Platform
  readonly #log: Logger

  constructor(components: ImagePullerComponents, init: ImagePullerInit = {}) {
    this.#c = components
    this.#platform = init.platform ?? defaultPlatform()
    this.#log = components.logger.child({ component: 'pull' })
  }

  async pull(reference: string, options: PullOptions = {}): Promise<PullResult> {
    const started = this.#c.clock.now()
    const ref = parseReference(reference)
    const at = { registry: ref.registry, repository: ref.repository }
    const emit = options.onEvent ?? (() => {})
    let m = await this.#c.manifests.get({
      ...at,
      reference: ref.digest ?? ref.tag ?? 'latest',
      signal: options.signal
    })
    let parsed = this.#c.manifests.parse(m.bytes, m.mediaType, at)
    let platform: string | undefined
    let indexDigest: string | undefined
    if (parsed.kind === 'index') {
      indexDigest = m.digest
      const p = options.platform ?? this.#platform
      const chosen = selectManifest(parsed, p)
      platform = [p.os, p.architecture, p.variant].filter(Boolean).join('/')
      m = await this.#c.manifests.get({ ...at, reference: chosen.digest, signal: options.signal })
      parsed = this.#c.manifests.parse(m.bytes, m.mediaType, at)
      if (parsed.kind === 'index') {
        throw new InvalidManifestError(
          `index ${chosen.digest} points at another index; nested indexes are not supported`
        )
      }
    }
    const blobs = [
      { ...parsed.config, kind: 'config' as const },
      ...parsed.layers.map((l) => ({ ...l, kind: 'layer' as const }))
    ]
    emit({
      type: 'resolved',
      reference,
      manifestDigest: m.digest,
      mediaType: m.mediaType,
      platform,
      blobs: blobs.map((b) => ({ digest: b.digest, size: b.size, mediaType: b.mediaType, kind: b.kind }))
    })
    // The platform manifest's key, not the index's: it is the manifest that lists the blobs.
    const key = accessKey(m.bytes)
    const totals: Partial<Record<ByteOrigin, number>> = {}
    const seen = new Set<string>()
    await Promise.all(
      blobs.map(async (b) => {
        if (seen.has(b.digest)) return // the same blob twice in one image is fetched once
        seen.add(b.digest)
        let last: BlobProgress | undefined
        await this.#c.fetcher.fetch(
          { digest: b.digest, size: b.size, mediaType: b.mediaType, ...at, accessKey: key },
          {
            signal: options.signal,
            onProgress: (p) => {
              last = p
              emit({ type: 'progress', digest: b.digest, bytesHeld: p.bytesHeld, size: p.size })
            }
          }
        )
        const origin = originOf(last, b.size)
        for (const [k, v] of Object.entries(origin) as [ByteOrigin, number][])
          totals[k] = (totals[k] ?? 0) + v
        emit({ type: 'blob-done', digest: b.digest, size: b.size, origin })
      })
    )
    const durationMs = this.#c.clock.now() - started
    const totalBytes = Object.values(totals).reduce((a, b) => a + (b ?? 0), 0)
    this.#log.info({ reference, manifest: m.digest, bytes: totals, durationMs }, 'pulled')
    emit({ type: 'done', reference, manifestDigest: m.digest, bytes: totals, totalBytes, durationMs })
    return {
      manifestDigest: m.digest,
      ...(indexDigest !== undefined && { indexDigest }),
      config: parsed.config,
      layers: parsed.layers,
      bytes: totals
    }
  }
}

/** Splits a blob's bytes by origin: fetched now (by source) and already held (local). */
function originOf(p: BlobProgress | undefined, size: number): Partial<Record<ByteOrigin, number>> {
  if (p === undefined) return { local: size }
  const out: Partial<Record<ByteOrigin, number>> = {}
  let fetched = 0
  for (const [k, v] of Object.entries(p.fetched) as [PieceSource, number][]) {
    out[k] = v
    fetched += v
  }
  if (size - fetched > 0) out.local = size - fetched
  return out
}
