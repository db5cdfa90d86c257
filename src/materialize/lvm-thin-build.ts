import { mkdir, rm, rmdir } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { BlobUnknownError, InternalError, toShoalError } from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import type { BlobStore } from '../interface/store.ts'
import type { CommandRunner } from './command-runner.ts'
import { type ExtractLayerResult, extractLayer } from './extract.ts'
import type { LvmCommands } from './lvm-thin-lvm.ts'
import { buildingVolumeName, type ChainLayer, layerVolumeName, layerVolumeTags } from './lvm-thin-names.ts'
import type { LayerVolume } from './lvm-thin-state.ts'

/** File systems a layer volume can hold. */
export type LvmFileSystem = 'ext4' | 'xfs'

/**
 * Makes the file system of a new base volume. No discard: a new thin volume holds no blocks,
 * and ext4 would then zero its inode tables on the first mount, in every snapshot again.
 */
export async function makeFileSystem(
  runner: CommandRunner,
  device: string,
  fstype: LvmFileSystem,
  options: AbortOptions = {}
): Promise<void> {
  if (fstype === 'xfs') await runner.run('mkfs.xfs', ['-q', '-K', device], options)
  else await runner.run('mkfs.ext4', ['-q', '-E', 'nodiscard', device], options)
}

/** The `mount` arguments for a layer volume. */
export function mountArgs(device: string, fstype: LvmFileSystem, mountPoint: string): string[] {
  // Snapshots share their origin's XFS UUID; XFS refuses a second mount of one without this.
  const options = fstype === 'xfs' ? ['-o', 'nouuid'] : []
  return ['-t', fstype, ...options, device, mountPoint]
}

export interface ApplyLayerInit {
  device: string
  fstype: LvmFileSystem
  /** An empty directory to create and mount the volume on. */
  mountPoint: string
  /** The layer blob (compressed or not). */
  source: AsyncIterable<Uint8Array>
  /** A new file system: `lost+found` goes, so the tree is the image's and nothing more. */
  fresh: boolean
}

/**
 * Mounts a volume that holds the tree of the layers below (a snapshot of its parent, or a new
 * file system), applies the layer on it in place (whiteouts delete, see `extractLayer`), and
 * unmounts it, which flushes it. The volume is unmounted whatever happens; the caller throws
 * away a volume whose layer failed.
 */
export async function applyLayerOnVolume(
  runner: CommandRunner,
  init: ApplyLayerInit,
  options: AbortOptions = {}
): Promise<ExtractLayerResult> {
  await mkdir(init.mountPoint, { recursive: true, mode: 0o700 })
  try {
    await runner.run('mount', mountArgs(init.device, init.fstype, init.mountPoint))
    try {
      if (init.fresh) await rm(join(init.mountPoint, 'lost+found'), { recursive: true, force: true })
      return await extractLayer(init.source, init.mountPoint, {
        runner,
        whiteouts: 'delete',
        signal: options.signal
      })
    } finally {
      await runner.run('umount', [init.mountPoint])
    }
  } finally {
    // rmdir, never rm -r: if the unmount failed, the volume's tree is still there.
    await rmdir(init.mountPoint).catch(() => {})
  }
}

export interface BuildComponents {
  store: BlobStore
  lvm: LvmCommands
  runner: CommandRunner
  log: Logger
}

export interface BuildInit {
  pool: string
  volumeSize: string
  /** File system of a base volume (a snapshot has its parent's). */
  fstype: LvmFileSystem
  mountDir: string
}

/**
 * Throws `BlobUnknownError` unless the layer's blob is complete in the store, and
 * `InternalError` unless `parent` is the volume of the layer below it (none for the bottom).
 */
export async function assertLayerBuildable(
  store: BlobStore,
  layer: ChainLayer,
  parent: LayerVolume | undefined
): Promise<void> {
  const info = await store.stat(layer.digest)
  if (!info?.complete) throw new BlobUnknownError(`layer ${layer.digest} is not complete in the store`)
  if (parent?.chain !== layer.parent) {
    throw new InternalError(`the volume below layer ${layer.digest} is gone`)
  }
}

/**
 * Builds the volume of one layer on its parent's volume (none for the bottom layer: a new thin
 * volume with a new file system), under a temporary name, and renames it once complete and
 * read-only: a volume with a layer's name is always whole. On failure the temporary volume is
 * removed (what a crash leaves, `start()` removes). `signal` stops the layer's application.
 */
export async function buildLayerVolume(
  components: BuildComponents,
  init: BuildInit,
  layer: ChainLayer,
  parent: LayerVolume | undefined,
  signal: AbortSignal
): Promise<LayerVolume> {
  const { store, lvm, runner, log } = components
  await assertLayerBuildable(store, layer, parent)
  const fstype = parent?.fstype ?? init.fstype
  const tmp = buildingVolumeName(layer.chain)
  const name = layerVolumeName(layer.chain)
  const tags = layerVolumeTags(layer, fstype)
  const lease = store.acquire(layer.digest)
  let created = false
  try {
    // LVM commands get no signal: a killed lvcreate could leave its metadata half written.
    if (parent) await lvm.snapshot(tmp, parent.name, tags)
    else await lvm.createThin(tmp, init.pool, init.volumeSize, tags)
    created = true
    if (!parent) await makeFileSystem(runner, lvm.device(tmp), fstype)
    signal.throwIfAborted()
    const { entries, bytes } = await applyLayerOnVolume(
      runner,
      {
        device: lvm.device(tmp),
        fstype,
        mountPoint: join(init.mountDir, tmp),
        source: store.stream(layer.digest),
        fresh: !parent
      },
      { signal }
    )
    signal.throwIfAborted()
    await lvm.setReadOnly(tmp)
    await lvm.rename(tmp, name)
    log.info({ digest: layer.digest, volume: name, entries, bytes }, 'layer volume built')
    return { ...layer, name, fstype, active: true }
  } catch (err) {
    if (created) {
      await lvm.remove(tmp).catch((e: unknown) => {
        log.warn({ volume: tmp, reason: toShoalError(e).message }, 'cannot remove a failed volume')
      })
    }
    const e = toShoalError(err)
    log.warn({ digest: layer.digest, code: e.code, reason: e.message }, 'layer volume build failed')
    throw e
  } finally {
    lease.release()
  }
}
