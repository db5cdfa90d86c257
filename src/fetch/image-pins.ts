import type { Logger } from 'pino'
import { isDigest, parseDigest } from '../content/digest.ts'
import { BlobUnknownError, NotPinnedError } from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import type { BlobStore } from '../interface/store.ts'
import { parseManifest } from '../oci/manifest.ts'
import { baseMediaType, INDEX_TYPES, MANIFEST_TYPES } from '../oci/media-types.ts'
import { formatReference, parseReference } from '../oci/reference.ts'
import type { ImagePuller } from './image-puller.ts'

/** Collaborators of `ImagePins`. */
export interface ImagePinsComponents {
  store: BlobStore
  puller: ImagePuller
  logger: Logger
}

/** One name and the blobs it holds pinned. */
export interface Pin {
  /** A fully qualified image reference, or a digest. */
  name: string
  digests: string[]
  /** Bytes of those blobs. */
  bytes: number
}

/**
 * Pins images and blobs under a name, so the quota never evicts them: `pin(reference)` pulls
 * the image and pins its index (if any), manifest, config and layers under the reference;
 * `pin(digest)` pins a blob the store holds and, for a manifest or index, whatever of its
 * content the store holds too. A blob stays pinned while any name holds it, so unpinning one
 * image leaves the layers it shares with another pinned image alone. Pins are the store's
 * (persisted with each blob's record), so they survive restarts.
 */
export class ImagePins {
  readonly #c: ImagePinsComponents
  readonly #log: Logger

  constructor(components: ImagePinsComponents) {
    this.#c = components
    this.#log = components.logger.child({ component: 'pins' })
  }

  /** Pins `target` (an image reference or a digest); returns the name and what it pins. */
  async pin(target: string, options: AbortOptions = {}): Promise<Pin> {
    const name = pinName(target)
    const digests = isDigest(name) ? await this.#held(name) : await this.#pulled(name, options)
    for (const d of digests) await this.#c.store.setPinned(d, true, { name, ...options })
    this.#log.info({ name, blobs: digests.length }, 'pinned')
    return this.#describe(name, digests)
  }

  /** Drops the pin `target` names from every blob it holds; throws `NotPinnedError` for none. */
  async unpin(target: string, options: AbortOptions = {}): Promise<Pin> {
    const name = pinName(target)
    const held = (await this.#c.store.list(options)).filter((b) => b.pins?.includes(name))
    if (held.length === 0) throw new NotPinnedError(`nothing is pinned as ${name}`)
    for (const b of held) await this.#c.store.setPinned(b.digest, false, { name, ...options })
    this.#log.info({ name, blobs: held.length }, 'unpinned')
    return { name, digests: held.map((b) => b.digest), bytes: held.reduce((n, b) => n + b.size, 0) }
  }

  /** Every pin, by name. */
  async list(options: AbortOptions = {}): Promise<Pin[]> {
    const byName = new Map<string, Pin>()
    for (const b of await this.#c.store.list(options)) {
      for (const name of b.pins ?? []) {
        const pin = byName.get(name) ?? { name, digests: [], bytes: 0 }
        pin.digests.push(b.digest)
        pin.bytes += b.size
        byName.set(name, pin)
      }
    }
    return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name))
  }

  /** Pulls the image (complete and verified in the store) and lists its blobs. */
  async #pulled(reference: string, options: AbortOptions): Promise<string[]> {
    const r = await this.#c.puller.pull(reference, options)
    const digests = [r.manifestDigest, r.config.digest, ...r.layers.map((l) => l.digest)]
    if (r.indexDigest !== undefined) digests.unshift(r.indexDigest)
    return [...new Set(digests)]
  }

  /** A blob the store holds and, when it is a manifest or an index, the held blobs it names. */
  async #held(digest: string): Promise<string[]> {
    const out = new Set<string>()
    const visit = async (d: string, depth: number): Promise<void> => {
      const info = await this.#c.store.stat(d)
      if (!info?.complete) {
        if (depth === 0) throw new BlobUnknownError(`the store holds no complete blob ${d}`)
        return
      }
      out.add(d)
      const type = baseMediaType(info.mediaType ?? '')
      // An index names manifests, a manifest names blobs: two levels at most.
      if (depth > 1 || !(MANIFEST_TYPES.includes(type) || INDEX_TYPES.includes(type))) return
      const parsed = parseManifest(await this.#c.store.read(d, { start: 0, end: info.size }), type)
      const named = parsed.kind === 'index' ? parsed.manifests : [parsed.config, ...parsed.layers]
      for (const n of named) await visit(n.digest, depth + 1)
    }
    await visit(digest, 0)
    return [...out]
  }

  async #describe(name: string, digests: string[]): Promise<Pin> {
    let bytes = 0
    for (const d of digests) bytes += (await this.#c.store.stat(d))?.size ?? 0
    return { name, digests, bytes }
  }
}

/** The name a target is pinned under: the digest itself, or the fully qualified reference. */
export function pinName(target: string): string {
  // Checked as a digest (INVALID_DIGEST) rather than read as a Docker Hub image named sha256.
  if (target.startsWith('sha256:')) return parseDigest(target)
  return formatReference(parseReference(target))
}
