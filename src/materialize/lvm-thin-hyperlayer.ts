import type { Logger } from 'pino'
import { toShoalError } from '../errors.ts'
import type { BlobStore } from '../interface/store.ts'
import type { LvmHyperlayers } from './hyperlayer.ts'
import { assertLayerBuildable, type LvmFileSystem } from './lvm-thin-build.ts'
import type { LvmCommands } from './lvm-thin-lvm.ts'
import { buildingVolumeName, type ChainLayer, layerVolumeName, layerVolumeTags } from './lvm-thin-names.ts'
import type { LayerVolume } from './lvm-thin-state.ts'

export interface HyperlayerBuildComponents {
  store: BlobStore
  lvm: LvmCommands
  hyperlayers: LvmHyperlayers
  log: Logger
}

export interface HyperlayerBuildInit {
  pool: string
  /** File system assumed for a root hyperlayer whose header names none. */
  fstype: LvmFileSystem
}

/**
 * Builds the volume of a hyperlayer (a block-level layer): a thin snapshot of the parent's
 * volume with the patch's blocks written in, or for a root hyperlayer a new thin volume of the
 * patch's size; no file system is mounted or walked. Built under a temporary name and renamed
 * once complete and read-only, like a tar layer's volume; `LvmHyperlayers.apply` removes it on
 * failure (a malformed patch, one made against other blocks than the parent's).
 */
export async function buildHyperlayerVolume(
  components: HyperlayerBuildComponents,
  init: HyperlayerBuildInit,
  layer: ChainLayer,
  parent: LayerVolume | undefined,
  signal: AbortSignal
): Promise<LayerVolume> {
  const { store, lvm, hyperlayers, log } = components
  await assertLayerBuildable(store, layer, parent)
  const tmp = buildingVolumeName(layer.chain)
  const name = layerVolumeName(layer.chain)
  let fstype: LvmFileSystem = parent?.fstype ?? init.fstype
  const lease = store.acquire(layer.digest)
  try {
    const applied = await hyperlayers.apply(store.stream(layer.digest), parent?.name, tmp, {
      digest: layer.digest,
      pool: init.pool,
      signal,
      tags: (header) => {
        fstype = parent?.fstype ?? header.fstype ?? init.fstype
        return layerVolumeTags(layer, fstype)
      }
    })
    try {
      await lvm.rename(tmp, name)
    } catch (err) {
      await lvm.remove(tmp).catch(() => {})
      throw err
    }
    log.info(
      {
        digest: layer.digest,
        volume: name,
        extents: applied.header.extentCount,
        bytes: applied.header.dataBytes
      },
      'hyperlayer volume built'
    )
    return { ...layer, name, fstype, active: true }
  } catch (err) {
    const e = toShoalError(err)
    log.warn({ digest: layer.digest, code: e.code, reason: e.message }, 'hyperlayer volume build failed')
    throw e
  } finally {
    lease.release()
  }
}
