import { mkdir } from 'node:fs/promises'
import type { Logger } from 'pino'
import { DEFAULT_LVM_POOL, DEFAULT_LVM_POOL_SIZE, DEFAULT_LVM_VOLUME_SIZE } from '../constants.ts'
import { AbortedError, BadRequestError, InternalError, toShoalError } from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import type { Materialization, MaterializeOptions, Materializer } from '../interface/materializer.ts'
import type { BlobStore } from '../interface/store.ts'
import { abortable } from './abortable.ts'
import { type CommandRunner, execFileRunner } from './command-runner.ts'
import { LvmHyperlayers } from './hyperlayer.ts'
import { HYPERLAYER_MEDIA_TYPE } from './hyperlayer-format.ts'
import { buildLayerVolume, type LvmFileSystem } from './lvm-thin-build.ts'
import { type ContainerVolume, LvmContainerVolumes } from './lvm-thin-containers.ts'
import { buildHyperlayerVolume } from './lvm-thin-hyperlayer.ts'
import { LvmCommands } from './lvm-thin-lvm.ts'
import { type ChainLayer, chainLayers, layerVolumeName } from './lvm-thin-names.ts'
import { type LayerVolume, readVolumes, removeLeftovers } from './lvm-thin-state.ts'

export { DEFAULT_LVM_POOL, DEFAULT_LVM_POOL_SIZE, DEFAULT_LVM_VOLUME_SIZE } from '../constants.ts'
export type { LvmFileSystem } from './lvm-thin-build.ts'
export type { ContainerVolume } from './lvm-thin-containers.ts'

export interface LvmThinMaterializerComponents {
  /** Where layer blobs come from: only complete (verified) blobs are applied. */
  store: BlobStore
  logger: Logger
  /** Runs the LVM tools, mkfs, mount and umount (default: `execFile`). */
  runner?: CommandRunner
}

export interface LvmThinMaterializerInit {
  /** The volume group holding the thin pool. */
  vg: string
  /** The thin pool (default `DEFAULT_LVM_POOL`). */
  pool?: string
  /**
   * A block device to create the volume group (and the pool) on when they do not exist. Without
   * it both must exist; with it, a missing pool is created in an existing group too.
   */
  device?: string
  /** Size of a pool created here (default `DEFAULT_LVM_POOL_SIZE`): `20G` or `95%FREE`. */
  poolSize?: string
  /** Virtual size of a base volume, and so of its snapshots (default `DEFAULT_LVM_VOLUME_SIZE`). */
  volumeSize?: string
  /** File system of new base volumes (default `ext4`). */
  fstype?: LvmFileSystem
  /** Where a volume being built is mounted while its layer is applied. */
  mountDir: string
}

/** A layer volume as `volumes()` lists it. */
export interface LayerVolumeInfo extends ChainLayer {
  /** The logical volume's name. */
  name: string
  device: string
  fstype: LvmFileSystem
  references: number
}

/** Work in progress on one layer volume: other calls for the same chain wait for it. */
interface Busy {
  kind: 'build' | 'remove'
  done: Promise<void>
}

/**
 * Materializes images on LVM thin volumes, one thin pool per node. The bottom layer becomes a
 * thin volume with a file system holding its tree; each next layer a thin snapshot of the
 * volume below it, with the layer applied inside (whiteouts as deletions), then made
 * read-only. A volume is named after its layer's chain ID (`chainLayers`), so images sharing
 * their bottom layers share those volumes, and tagged with the layer digest and its parent, so
 * a restart finds the state again in `lvs`. A volume is built under a temporary name and
 * renamed once complete: `start()` removes the unfinished ones a crash left.
 *
 * Each volume is reference-counted per `materialize`; `prune` removes the unreferenced ones,
 * children before parents, and never a volume something (a layer, a container) is a snapshot
 * of. Every command goes through the injected runner. See docs/decisions/0008.
 */
export class LvmThinMaterializer implements Materializer {
  readonly driver = 'lvm-thin' as const
  readonly #store: BlobStore
  readonly #log: Logger
  readonly #runner: CommandRunner
  readonly #lvm: LvmCommands
  readonly #hyperlayers: LvmHyperlayers
  readonly #init: Required<Omit<LvmThinMaterializerInit, 'device'>> & { device?: string }
  /** Finished layer volumes by chain ID. */
  readonly #layers = new Map<string, LayerVolume>()
  readonly #containers: LvmContainerVolumes
  readonly #refs = new Map<string, number>()
  readonly #busy = new Map<string, Busy>()
  #started = false
  /** Aborted by `stop()`: ends the layer applications in progress. */
  #stopping = new AbortController()

  constructor(components: LvmThinMaterializerComponents, init: LvmThinMaterializerInit) {
    this.#store = components.store
    this.#log = components.logger.child({ component: 'materialize', driver: 'lvm-thin' })
    this.#runner = components.runner ?? execFileRunner
    this.#lvm = new LvmCommands(this.#runner, init.vg)
    this.#hyperlayers = new LvmHyperlayers(
      { logger: components.logger, runner: this.#runner },
      { vg: init.vg }
    )
    this.#containers = new LvmContainerVolumes(this.#lvm, this, this.#log)
    this.#init = {
      ...init,
      pool: init.pool ?? DEFAULT_LVM_POOL,
      poolSize: init.poolSize ?? DEFAULT_LVM_POOL_SIZE,
      volumeSize: init.volumeSize ?? DEFAULT_LVM_VOLUME_SIZE,
      fstype: init.fstype ?? 'ext4'
    }
  }

  /**
   * Finds (or creates, given a device) the volume group and thin pool, removes the volumes a
   * crash left half built, and reads what the finished ones hold from their tags.
   */
  async start(): Promise<void> {
    if (this.#started) return
    if (this.#stopping.signal.aborted) this.#stopping = new AbortController()
    await mkdir(this.#init.mountDir, { recursive: true, mode: 0o700 })
    const found = await readVolumes(this.#lvm, this.#init, this.#log)
    await removeLeftovers(this.#lvm, this.#runner, found.leftovers, this.#init.mountDir, this.#log)
    this.#layers.clear()
    for (const v of found.layers) this.#layers.set(v.chain, v)
    this.#containers.load(found.containers)
    this.#started = true
    this.#log.info({ layers: this.#layers.size, containers: found.containers.length }, 'thin pool ready')
  }

  /** Stops the layer applications in progress (their callers get `AbortedError`) and waits. */
  async stop(): Promise<void> {
    this.#stopping.abort(new AbortedError('the LVM materializer is stopping'))
    await Promise.allSettled([...this.#busy.values()].map((b) => b.done))
    this.#started = false
  }

  /**
   * The image's volumes, built from the store's complete blobs where missing, with one
   * reference taken on each (give them back with `release`). Throws `BlobUnknownError` when a
   * blob is not complete in the store, `UnsafeLayerError` for a layer that cannot be applied
   * safely; the references taken before a failure are given back. The caller's signal stops
   * its wait, not a build others share.
   */
  async materialize(
    layerDigests: readonly string[],
    options: MaterializeOptions = {}
  ): Promise<Materialization> {
    if (this.#stopping.signal.aborted) throw new AbortedError('the LVM materializer is stopped')
    if (!this.#started) throw new InternalError('the LVM materializer is not started')
    if (layerDigests.length === 0) throw new BadRequestError('an image without layers has no volume to mount')
    const layers = chainLayers(layerDigests)
    const taken: string[] = []
    try {
      for (const [i, layer] of layers.entries()) {
        await this.#acquire(layer, options.mediaTypes?.[layer.digest], options)
        taken.push(layer.chain)
        options.onProgress?.({ digest: layer.digest, done: i + 1, total: layers.length })
      }
    } catch (err) {
      for (const chain of taken) this.#unref(chain)
      throw err
    }
    const top = this.#layers.get((layers.at(-1) as ChainLayer).chain) as LayerVolume
    return {
      driver: 'lvm-thin',
      layers: layers.map((l) => ({ digest: l.digest, path: this.#lvm.device(layerVolumeName(l.chain)) })),
      mount: {
        type: 'block',
        device: this.#lvm.device(top.name),
        fstype: top.fstype,
        ...(top.fstype === 'xfs' && { options: ['nouuid'] })
      }
    }
  }

  /** Gives back the references one `materialize` of these layers took. */
  async release(layerDigests: readonly string[]): Promise<void> {
    for (const layer of chainLayers(layerDigests)) this.#unref(layer.chain)
  }

  /**
   * Removes every layer volume no one holds, no build uses and nothing is a snapshot of,
   * leaves first, so a parent goes after its children; returns the removed volumes' layer
   * digests in removal order. A volume LVM refuses to remove (open) stays, and its parents too.
   */
  async prune(): Promise<string[]> {
    const removed: string[] = []
    const failed = new Set<string>()
    for (;;) {
      // LVM's own view too: a snapshot this process does not know of still needs its origin.
      const origins = new Set((await this.#lvm.volumes()).map((lv) => lv.origin).filter((o) => o !== ''))
      const parents = new Set<string | undefined>([
        ...[...this.#layers.values()].map((v) => v.parent),
        ...this.#containers.parents()
      ])
      const leaves = [...this.#layers.values()].filter(
        (v) => !this.#held(v.chain) && !parents.has(v.chain) && !origins.has(v.name) && !failed.has(v.chain)
      )
      if (leaves.length === 0) break
      for (const v of leaves) {
        if (this.#held(v.chain)) continue
        const done = this.#remove(v).finally(() => this.#busy.delete(v.chain))
        this.#busy.set(v.chain, { kind: 'remove', done })
        try {
          await done
          removed.push(v.digest)
        } catch (err) {
          failed.add(v.chain)
          this.#log.warn(
            { volume: v.name, reason: toShoalError(err).message },
            'cannot remove a layer volume'
          )
        }
      }
    }
    if (removed.length > 0) this.#log.info({ volumes: removed.length }, 'pruned unused layer volumes')
    return removed
  }

  /**
   * A new writable volume for a container: a thin snapshot of the image's top layer volume
   * (materialized if needed). It holds the image's volumes as long as it exists: `prune` never
   * removes a volume with snapshots. Throws `BadRequestError` for a bad or taken name.
   */
  createContainerVolume(layerDigests: readonly string[], name: string, options: AbortOptions = {}) {
    return this.#containers.create(layerDigests, name, options)
  }

  /** Removes a container's volume (it must be unmounted); false when there is none. */
  removeContainerVolume(name: string): Promise<boolean> {
    return this.#containers.remove(name)
  }

  /** The finished layer volumes, with the references held on each. */
  volumes(): LayerVolumeInfo[] {
    return [...this.#layers.values()].map((v) => ({
      digest: v.digest,
      chain: v.chain,
      ...(v.parent === undefined ? {} : { parent: v.parent }),
      name: v.name,
      device: this.#lvm.device(v.name),
      fstype: v.fstype,
      references: this.#refs.get(v.chain) ?? 0
    }))
  }

  /** The container volumes. */
  containerVolumes(): ContainerVolume[] {
    return this.#containers.list()
  }

  /** Takes a reference on a layer's volume, building (or activating) it first if needed. */
  async #acquire(layer: ChainLayer, mediaType: string | undefined, options: AbortOptions): Promise<void> {
    for (;;) {
      if (this.#stopping.signal.aborted) throw new AbortedError('the LVM materializer is stopped')
      const busy = this.#busy.get(layer.chain)
      if (busy?.kind === 'remove') {
        await busy.done.catch(() => {})
        continue
      }
      if (busy) {
        await abortable(busy.done, options.signal)
        continue
      }
      const existing = this.#layers.get(layer.chain)
      if (existing?.active) {
        // No await between the check and the reference: prune cannot take the volume meanwhile.
        this.#refs.set(layer.chain, (this.#refs.get(layer.chain) ?? 0) + 1)
        return
      }
      const work = existing ? this.#activate(existing) : this.#build(layer, mediaType)
      const done = work.finally(() => this.#busy.delete(layer.chain))
      this.#busy.set(layer.chain, { kind: 'build', done })
      await abortable(done, options.signal)
    }
  }

  /** Builds a layer's volume: a tar layer applied in a mounted snapshot, or a hyperlayer's blocks. */
  async #build(layer: ChainLayer, mediaType: string | undefined): Promise<void> {
    const parent = layer.parent === undefined ? undefined : this.#layers.get(layer.parent)
    const signal = this.#stopping.signal
    const volume =
      mediaType === HYPERLAYER_MEDIA_TYPE
        ? await buildHyperlayerVolume(
            { store: this.#store, lvm: this.#lvm, hyperlayers: this.#hyperlayers, log: this.#log },
            this.#init,
            layer,
            parent,
            signal
          )
        : await buildLayerVolume(
            { store: this.#store, lvm: this.#lvm, runner: this.#runner, log: this.#log },
            this.#init,
            layer,
            parent,
            signal
          )
    this.#layers.set(layer.chain, volume)
  }

  /** Activates a volume found inactive (after a reboot, say). */
  async #activate(volume: LayerVolume): Promise<void> {
    await this.#lvm.activate(volume.name)
    volume.active = true
  }

  async #remove(volume: LayerVolume): Promise<void> {
    await this.#lvm.remove(volume.name)
    this.#layers.delete(volume.chain)
  }

  #held(chain: string): boolean {
    return (this.#refs.get(chain) ?? 0) > 0 || this.#busy.has(chain)
  }

  #unref(chain: string): void {
    const held = this.#refs.get(chain) ?? 0
    if (held === 0) this.#log.warn({ chain }, 'released a layer volume that holds no reference')
    else if (held === 1) this.#refs.delete(chain)
    else this.#refs.set(chain, held - 1)
  }
}
