import type { AbortOptions, Startable } from './common.ts'

/** The ways a node can lay layers out for a runtime to mount. */
export type MaterializerDriver = 'local-cache' | 'lvm-thin'

/** One layer of a materialized image. */
export interface MaterializedLayer {
  /** The layer blob's digest (as in the manifest). */
  digest: string
  /** local-cache: the layer's extracted directory; lvm-thin: the layer volume's device path. */
  path: string
}

/** What a runtime mounts to see an image's root file system. */
export type MountSpec =
  /** overlayfs: `lowerdir=` is `lowerdirs.join(':')` (top layer first). */
  | { type: 'overlay'; lowerdirs: string[] }
  /**
   * A block device holding the whole tree (the top layer's volume), read-only. `options` are
   * mount options the file system needs besides `ro` (`nouuid` for XFS: a snapshot shares its
   * origin's UUID, and XFS refuses a second mount of one UUID without it).
   */
  | { type: 'block'; device: string; fstype: string; options?: string[] }

/** An image (or a single layer) laid out for mounting. */
export interface Materialization {
  driver: MaterializerDriver
  /** The layers, bottom first (manifest order). */
  layers: MaterializedLayer[]
  mount: MountSpec
}

/** Progress of one materialization: `done` of `total` layers are ready. */
export interface MaterializeProgress {
  digest: string
  done: number
  total: number
}

export interface MaterializeOptions extends AbortOptions {
  onProgress?: (progress: MaterializeProgress) => void
  /**
   * Media types of the layers, by digest, as the manifest gives them; a layer not listed is a
   * tar layer. A driver refuses a type it cannot apply (`UNSUPPORTED_MEDIA_TYPE`): the
   * block-level hyperlayer (`application/vnd.shoal.hyperlayer.v1`) needs `lvm-thin`.
   */
  mediaTypes?: Readonly<Record<string, string>>
}

/**
 * Lays out images whose layer blobs are complete (verified) in the store. Reference-counted and
 * idempotent: materializing an image twice takes two references and does the work once;
 * `release` gives one back; `prune` removes what no one holds. Concurrent calls for the same
 * layers share the work.
 */
export interface Materializer extends Startable {
  readonly driver: MaterializerDriver
  /** `layerDigests` in manifest order, bottom first. */
  materialize(layerDigests: readonly string[], options?: MaterializeOptions): Promise<Materialization>
  /** Gives back the references one `materialize` of these layers took. */
  release(layerDigests: readonly string[]): Promise<void>
  /** Removes every materialized layer no one holds a reference on; returns their digests. */
  prune(): Promise<string[]>
}
