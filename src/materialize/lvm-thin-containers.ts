import type { Logger } from 'pino'
import { BadRequestError } from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import type { Materialization } from '../interface/materializer.ts'
import type { LvmFileSystem } from './lvm-thin-build.ts'
import type { LvmCommands } from './lvm-thin-lvm.ts'
import {
  type ChainLayer,
  chainLayers,
  containerVolumeName,
  FSTYPE_TAG,
  layerVolumeName,
  PARENT_TAG
} from './lvm-thin-names.ts'
import type { ContainerRecord } from './lvm-thin-state.ts'

/** A container's writable volume: a snapshot of its image's top layer volume. */
export interface ContainerVolume {
  name: string
  device: string
  fstype: LvmFileSystem
}

/** What container volumes need of the layer volumes. */
export interface ImageVolumes {
  materialize(layerDigests: readonly string[], options?: AbortOptions): Promise<Materialization>
  release(layerDigests: readonly string[]): Promise<void>
}

/**
 * The containers' writable volumes, each a thin snapshot of an image's top layer volume, so
 * a container starts from the image's tree at no cost and its writes stay in its own volume.
 * A container volume holds its image's volumes by being a snapshot: `prune` never removes a
 * volume with snapshots.
 */
export class LvmContainerVolumes {
  readonly #lvm: LvmCommands
  readonly #images: ImageVolumes
  readonly #log: Logger
  readonly #records = new Map<string, ContainerRecord>()
  /** Names being created. */
  readonly #creating = new Set<string>()

  constructor(lvm: LvmCommands, images: ImageVolumes, log: Logger) {
    this.#lvm = lvm
    this.#images = images
    this.#log = log
  }

  /** Replaces what is known with the volumes found in the volume group. */
  load(records: ContainerRecord[]): void {
    this.#records.clear()
    for (const r of records) this.#records.set(r.name, r)
  }

  /** The chain IDs of the layer volumes the containers are snapshots of. */
  parents(): string[] {
    return [...this.#records.values()].map((r) => r.parent)
  }

  /** See `LvmThinMaterializer.createContainerVolume`. */
  async create(
    layerDigests: readonly string[],
    name: string,
    options: AbortOptions = {}
  ): Promise<ContainerVolume> {
    const volume = containerVolumeName(name)
    if (this.#records.has(name) || this.#creating.has(name)) {
      throw new BadRequestError(`container volume ${name} already exists`)
    }
    this.#creating.add(name)
    try {
      // The references materialize takes keep the image's volumes until the snapshot exists.
      const image = await this.#images.materialize(layerDigests, options)
      try {
        const chain = (chainLayers(layerDigests).at(-1) as ChainLayer).chain
        const fstype = (image.mount.type === 'block' ? image.mount.fstype : 'ext4') as LvmFileSystem
        const top = layerVolumeName(chain)
        await this.#lvm.snapshot(volume, top, [`${PARENT_TAG}${chain}`, `${FSTYPE_TAG}${fstype}`])
        this.#records.set(name, { name, volume, parent: chain, fstype })
        this.#log.info({ volume, parent: top }, 'container volume created')
        return { name, device: this.#lvm.device(volume), fstype }
      } finally {
        await this.#images.release(layerDigests)
      }
    } finally {
      this.#creating.delete(name)
    }
  }

  /** See `LvmThinMaterializer.removeContainerVolume`. */
  async remove(name: string): Promise<boolean> {
    const record = this.#records.get(name)
    if (!record) return false
    await this.#lvm.remove(record.volume)
    this.#records.delete(name)
    this.#log.info({ volume: record.volume }, 'container volume removed')
    return true
  }

  list(): ContainerVolume[] {
    return [...this.#records.values()].map((r) => ({
      name: r.name,
      device: this.#lvm.device(r.volume),
      fstype: r.fstype
    }))
  }
}
