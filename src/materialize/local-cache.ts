import { randomBytes } from 'node:crypto'
import { chmod, mkdir, readdir, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { digestHex } from '../content/digest.ts'
import { AbortedError, BlobUnknownError, toShoalError, UnsupportedMediaTypeError } from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import type { Materialization, MaterializeOptions, Materializer } from '../interface/materializer.ts'
import type { BlobStore } from '../interface/store.ts'
import { abortable } from './abortable.ts'
import { type CommandRunner, execFileRunner } from './command-runner.ts'
import { extractLayer } from './extract.ts'
import { HYPERLAYER_MEDIA_TYPE } from './hyperlayer-format.ts'

export interface LocalCacheMaterializerComponents {
  /** Where layer blobs come from: only complete (verified) blobs are extracted. */
  store: BlobStore
  logger: Logger
  /** Runs `mknod`, `setfattr` and `sync` (default: `execFile`). */
  runner?: CommandRunner
}

export interface LocalCacheMaterializerInit {
  /** Cache root: each layer is extracted to `<dir>/layers/<hex of its digest>`. */
  dir: string
  /** Flush each extracted layer to disk before it is put in place (default true). */
  durable?: boolean
}

/** Work in progress on one layer: other calls for the same digest wait for it. */
interface Busy {
  kind: 'extract' | 'remove'
  done: Promise<void>
}

/** Marks temporary trees (extractions in progress, removals): never taken for a layer. */
const TMP_MARK = '.tmp-'

/**
 * Materializes images for overlayfs from a local cache of extracted layers: each layer blob is
 * extracted once, safely (see `extractLayer`), into `<dir>/layers/<hex>`, and every image that
 * has it shares that directory as a read-only lowerdir. A layer directory exists only once its
 * extraction is complete (it is renamed into place), so one found on disk, say after a restart,
 * is reused as it is.
 *
 * Layers are reference-counted: `materialize` (an image) and `materializeLayer` (one layer)
 * take references, `release` and `releaseLayer` give them back, and `prune` removes the layers
 * no one holds. Concurrent calls for one digest share one extraction.
 */
export class LocalCacheMaterializer implements Materializer {
  readonly driver = 'local-cache' as const
  readonly #store: BlobStore
  readonly #log: Logger
  readonly #runner: CommandRunner
  readonly #layersDir: string
  readonly #durable: boolean
  readonly #refs = new Map<string, number>()
  readonly #busy = new Map<string, Busy>()
  /** Aborted by `stop()`: ends the extractions in progress. */
  #stopping = new AbortController()

  constructor(components: LocalCacheMaterializerComponents, init: LocalCacheMaterializerInit) {
    this.#store = components.store
    this.#log = components.logger.child({ component: 'materialize' })
    this.#runner = components.runner ?? execFileRunner
    this.#layersDir = join(init.dir, 'layers')
    this.#durable = init.durable ?? true
  }

  /** Creates the cache directory and removes what a crash left half done. */
  async start(): Promise<void> {
    if (this.#stopping.signal.aborted) this.#stopping = new AbortController()
    // Root's only, as containerd keeps its snapshots: a layer may hold a setuid-root binary or a
    // device node open to all, and no other user of the node may reach them through this path.
    await mkdir(this.#layersDir, { recursive: true, mode: 0o700 })
    await chmod(this.#layersDir, 0o700)
    for (const name of await readdir(this.#layersDir)) {
      if (!name.includes(TMP_MARK)) continue
      this.#log.info({ name }, 'removing an unfinished layer extraction')
      await rm(join(this.#layersDir, name), { recursive: true, force: true })
    }
  }

  /** Stops the extractions in progress (their callers get `AbortedError`) and waits for them. */
  async stop(): Promise<void> {
    this.#stopping.abort(new AbortedError('the layer cache is stopping'))
    await Promise.allSettled([...this.#busy.values()].map((b) => b.done))
  }

  /** Where a layer is (or would be) extracted. Throws `InvalidDigestError` for a bad digest. */
  layerPath(digest: string): string {
    return join(this.#layersDir, digestHex(digest))
  }

  /** References held on a layer. */
  references(digest: string): number {
    return this.#refs.get(digest) ?? 0
  }

  /**
   * The directory of a layer, extracted from the store's complete blob if it is not already
   * there, and takes a reference on it (give it back with `releaseLayer`). Throws
   * `BlobUnknownError` when the store has no complete blob, `UnsafeLayerError` for a layer that
   * cannot be extracted safely. The caller's signal stops its wait, not an extraction others share.
   */
  async materializeLayer(digest: string, options: AbortOptions = {}): Promise<string> {
    const path = this.layerPath(digest)
    for (;;) {
      if (this.#stopping.signal.aborted) throw new AbortedError('the layer cache is stopped')
      let busy = this.#busy.get(digest)
      if (busy?.kind === 'remove') {
        await busy.done.catch(() => {})
        continue
      }
      if (!busy) {
        const done = this.#extract(digest, path).finally(() => this.#busy.delete(digest))
        busy = { kind: 'extract', done }
        this.#busy.set(digest, busy)
      }
      await abortable(busy.done, options.signal)
      this.#refs.set(digest, this.references(digest) + 1)
      return path
    }
  }

  /**
   * Lays out an image whose layers are `layerDigests` in manifest order (bottom first). The
   * lowerdirs are top layer first, as overlayfs wants them; a digest listed twice appears once,
   * at its topmost place (overlayfs refuses a directory twice; the lower copy could show
   * nothing the upper one does not). Takes one reference per distinct layer (give them back
   * with `release`); if any layer fails, those taken are given back. `onProgress` is called as
   * each distinct layer is ready.
   */
  async materialize(
    layerDigests: readonly string[],
    options: MaterializeOptions = {}
  ): Promise<Materialization> {
    const layers = topmostFirst(layerDigests)
    for (const d of layers) this.layerPath(d) // a bad digest fails before any work starts
    for (const d of layers) {
      const type = options.mediaTypes?.[d]
      if (type === HYPERLAYER_MEDIA_TYPE) {
        throw new UnsupportedMediaTypeError(
          `layer ${d} is a hyperlayer (${type}), a block-level layer only materialize.driver lvm-thin applies`
        )
      }
    }
    const taken: string[] = []
    const results = await Promise.allSettled(
      layers.map(async (digest) => {
        const path = await this.materializeLayer(digest, options)
        taken.push(digest)
        options.onProgress?.({ digest, done: taken.length, total: layers.length })
        return path
      })
    )
    const failed = results.find((r) => r.status === 'rejected')
    if (failed) {
      for (const d of taken) this.releaseLayer(d)
      throw failed.reason
    }
    return {
      driver: this.driver,
      layers: layerDigests.map((digest) => ({ digest, path: this.layerPath(digest) })),
      mount: { type: 'overlay', lowerdirs: results.map((r) => (r as PromiseFulfilledResult<string>).value) }
    }
  }

  /** Gives back one reference on a layer; returns how many remain. */
  releaseLayer(digest: string): number {
    const held = this.references(digest)
    if (held === 0) {
      this.#log.warn({ digest }, 'released a layer that holds no reference')
      return 0
    }
    if (held === 1) this.#refs.delete(digest)
    else this.#refs.set(digest, held - 1)
    return held - 1
  }

  /** Gives back the references `materialize` took for these layers. */
  async release(layerDigests: readonly string[]): Promise<void> {
    for (const d of topmostFirst(layerDigests)) this.releaseLayer(d)
  }

  /**
   * Removes every extracted layer that holds no reference and is not being extracted; returns
   * their digests. A layer is first renamed aside, then removed, so a crash midway never leaves
   * a partial tree under a layer's name.
   */
  async prune(): Promise<string[]> {
    const names = await readdir(this.#layersDir).catch(() => [] as string[])
    const removed: string[] = []
    for (const hex of names) {
      if (!/^[a-f0-9]{64}$/.test(hex)) continue
      const digest = `sha256:${hex}`
      if (this.references(digest) > 0 || this.#busy.has(digest)) continue
      const done = this.#remove(this.layerPath(digest)).finally(() => this.#busy.delete(digest))
      this.#busy.set(digest, { kind: 'remove', done })
      await done
      removed.push(digest)
    }
    if (removed.length > 0) this.#log.info({ layers: removed.length }, 'pruned unused layers')
    return removed
  }

  async #extract(digest: string, path: string): Promise<void> {
    if (await isDirectory(path)) return
    const info = await this.#store.stat(digest)
    if (!info?.complete) throw new BlobUnknownError(`layer ${digest} is not complete in the store`)
    const lease = this.#store.acquire(digest)
    try {
      await mkdir(this.#layersDir, { recursive: true, mode: 0o700 })
      const { entries, bytes } = await extractLayer(this.#store.stream(digest), path, {
        runner: this.#runner,
        durable: this.#durable,
        signal: this.#stopping.signal
      })
      this.#log.info({ digest, entries, bytes }, 'layer extracted')
    } catch (err) {
      // Another process sharing the cache put the same layer in place first.
      const code = (err as NodeJS.ErrnoException).code
      if ((code === 'ENOTEMPTY' || code === 'EEXIST') && (await isDirectory(path))) return
      const e = toShoalError(err)
      this.#log.warn({ digest, code: e.code, reason: e.message }, 'layer extraction failed')
      throw e
    } finally {
      lease.release()
    }
  }

  async #remove(path: string): Promise<void> {
    const aside = `${path}${TMP_MARK}rm-${randomBytes(6).toString('hex')}`
    try {
      await rename(path, aside)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw err
    }
    await rm(aside, { recursive: true, force: true })
  }
}

/** Distinct digests, each at its topmost place, top first. */
function topmostFirst(layerDigests: readonly string[]): string[] {
  return [...new Set([...layerDigests].reverse())]
}

async function isDirectory(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isDirectory() ?? false
}
