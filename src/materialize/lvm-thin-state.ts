import { rmdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { isDigest } from '../content/digest.ts'
import { ConfigInvalidError, toShoalError } from '../errors.ts'
import type { CommandRunner } from './command-runner.ts'
import type { LvmFileSystem } from './lvm-thin-build.ts'
import { isActive, type LogicalVolume, type LvmCommands } from './lvm-thin-lvm.ts'
import {
  BUILDING_PREFIX,
  type ChainLayer,
  CONTAINER_PREFIX,
  chainLayers,
  chainOfVolume,
  DIGEST_TAG,
  FSTYPE_TAG,
  isLvmName,
  LAYER_PREFIX,
  PARENT_TAG,
  tagValue
} from './lvm-thin-names.ts'

/** A finished layer volume. */
export interface LayerVolume extends ChainLayer {
  name: string
  fstype: LvmFileSystem
  /** False for a volume found inactive (after a reboot): activated when next used. */
  active: boolean
}

/** A container's writable volume. */
export interface ContainerRecord {
  name: string
  /** The logical volume's name. */
  volume: string
  /** Chain ID of the layer volume it is a snapshot of. */
  parent: string
  fstype: LvmFileSystem
}

/** What the volume group holds for this node. */
export interface FoundVolumes {
  layers: LayerVolume[]
  containers: ContainerRecord[]
  /** Volumes a crash left half built. */
  leftovers: LogicalVolume[]
}

export interface PoolInit {
  pool: string
  device?: string
  poolSize: string
  fstype: LvmFileSystem
}

/**
 * Finds the volume group and the thin pool, creating them on `device` when given and missing,
 * and reads the pool's volumes: layer volumes from their name and tags, container volumes, and
 * leftovers. A volume whose tags do not match its name is left alone (and logged): it is not
 * one this code made.
 */
export async function readVolumes(lvm: LvmCommands, init: PoolInit, log: Logger): Promise<FoundVolumes> {
  if (!isLvmName(lvm.vg) || !isLvmName(init.pool)) {
    throw new ConfigInvalidError(`invalid LVM volume group or pool name: ${lvm.vg}/${init.pool}`)
  }
  if (!(await lvm.hasVolumeGroup())) {
    if (!init.device) {
      throw new ConfigInvalidError(
        `volume group ${lvm.vg} does not exist and no device is given to create it on`
      )
    }
    log.info({ vg: lvm.vg, device: init.device }, 'creating the volume group')
    await lvm.createVolumeGroup(init.device)
  }
  let volumes = await lvm.volumes()
  const pool = volumes.find((lv) => lv.name === init.pool)
  if (!pool) {
    if (!init.device) throw new ConfigInvalidError(`thin pool ${lvm.vg}/${init.pool} does not exist`)
    log.info({ vg: lvm.vg, pool: init.pool, size: init.poolSize }, 'creating the thin pool')
    await lvm.createPool(init.pool, init.poolSize)
    volumes = await lvm.volumes()
  } else if (pool.attr[0] !== 't') {
    throw new ConfigInvalidError(`${lvm.vg}/${init.pool} is not a thin pool`)
  }
  const found: FoundVolumes = { layers: [], containers: [], leftovers: [] }
  for (const lv of volumes) {
    if (lv.pool !== init.pool) continue
    if (lv.name.startsWith(BUILDING_PREFIX)) found.leftovers.push(lv)
    else if (lv.name.startsWith(CONTAINER_PREFIX)) {
      const parent = tagValue(lv.tags, PARENT_TAG)
      if (parent) {
        const name = lv.name.slice(CONTAINER_PREFIX.length)
        found.containers.push({ name, volume: lv.name, parent, fstype: fstypeOf(lv, init.fstype) })
      } else log.warn({ volume: lv.name }, 'a container volume without its parent tag: left alone')
    } else if (lv.name.startsWith(LAYER_PREFIX)) {
      const layer = layerOf(lv, init.fstype)
      if (layer) found.layers.push(layer)
      else
        log.warn(
          { volume: lv.name, tags: lv.tags },
          'a layer volume whose tags do not match its name: left alone'
        )
    }
  }
  return found
}

/** The layer a volume holds, if its name is the chain ID its tags give. */
function layerOf(lv: LogicalVolume, fallback: LvmFileSystem): LayerVolume | undefined {
  const chain = chainOfVolume(lv.name)
  const digest = tagValue(lv.tags, DIGEST_TAG)
  if (!chain || !digest || !isDigest(digest)) return undefined
  const parent = tagValue(lv.tags, PARENT_TAG)
  if (parent !== undefined && !/^[a-f0-9]{64}$/.test(parent)) return undefined
  // The chain ID of this digest on that parent: the last of a two-layer chain whose first
  // layer's chain ID is the parent's (a bottom layer's chain ID is its digest's hex).
  const expected = parent === undefined ? chainLayers([digest]) : chainLayers([`sha256:${parent}`, digest])
  if (expected.at(-1)?.chain !== chain) return undefined
  const layer: LayerVolume = {
    digest,
    chain,
    name: lv.name,
    fstype: fstypeOf(lv, fallback),
    active: isActive(lv)
  }
  if (parent !== undefined) layer.parent = parent
  return layer
}

function fstypeOf(lv: LogicalVolume, fallback: LvmFileSystem): LvmFileSystem {
  const tagged = tagValue(lv.tags, FSTYPE_TAG)
  return tagged === 'ext4' || tagged === 'xfs' ? tagged : fallback
}

/**
 * Removes the volumes a crash left half built, unmounting them first if the crash left them
 * mounted (the process died, the machine did not). One that cannot be removed is logged and
 * left: it blocks only a new build of the same layer.
 */
export async function removeLeftovers(
  lvm: LvmCommands,
  runner: CommandRunner,
  leftovers: LogicalVolume[],
  mountDir: string,
  log: Logger
): Promise<void> {
  for (const lv of leftovers) {
    const mountPoint = join(mountDir, lv.name)
    if (await stat(mountPoint).catch(() => undefined)) {
      await runner.run('umount', [mountPoint]).catch(() => {})
      await rmdir(mountPoint).catch(() => {})
    }
    try {
      await lvm.remove(lv.name)
      log.info({ volume: lv.name }, 'removed an unfinished layer volume')
    } catch (err) {
      log.warn(
        { volume: lv.name, reason: toShoalError(err).message },
        'cannot remove an unfinished layer volume'
      )
    }
  }
}
