import { createHash, randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import {
  BadRequestError,
  DigestMismatchError,
  HyperlayerParentMismatchError,
  InvalidHyperlayerError,
  toShoalError
} from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import { type CommandRunner, execFileRunner } from './command-runner.ts'
import { compareBlocks, deviceReader, writeExtents } from './hyperlayer-blocks.ts'
import {
  type HyperlayerExtent,
  type HyperlayerFileSystem,
  type HyperlayerHeader,
  openHyperlayer,
  writeHyperlayer
} from './hyperlayer-format.ts'
import { findThinChanges } from './hyperlayer-thin.ts'
import { LvmCommands, type VolumeDetails } from './lvm-thin-lvm.ts'
import { BLOCKS_TAG, blockIdentity, FSTYPE_TAG, tagValue } from './lvm-thin-names.ts'

export interface LvmHyperlayersComponents {
  logger: Logger
  /** Runs lvs, lvcreate, lvchange, dmsetup and thin_delta (default: `execFile`). */
  runner?: CommandRunner
}

export interface LvmHyperlayersInit {
  /** The volume group of the thin pool. */
  vg: string
}

/** How `diff` finds the changed blocks. */
export type DiffMethod = 'thin_delta' | 'compare'

export interface DiffOptions extends AbortOptions {
  /**
   * `thin_delta` (the pool's metadata, through a metadata snapshot), `compare` (read both
   * volumes whole), or `auto` (default): `thin_delta`, and `compare` if it fails.
   */
  method?: DiffMethod | 'auto'
}

/** The changes between two volumes, ready to be written as a hyperlayer. */
export interface HyperlayerDiff {
  header: HyperlayerHeader
  extents: HyperlayerExtent[]
  /** How the changed blocks were found. */
  method: DiffMethod
  /** The hyperlayer's bytes, read from the child volume as they are written. */
  stream(): AsyncIterable<Uint8Array>
  /** The child volume's device. */
  child: string
}

export interface ApplyOptions extends AbortOptions {
  /** The blob's digest, when known: checked against the bytes read, and tagged at once. */
  digest?: string
  /** Tags for the new volume (a function: from the checked header). */
  tags?: string[] | ((header: HyperlayerHeader) => string[])
  /** The thin pool of a new volume (a root hyperlayer has no parent to snapshot). */
  pool?: string
}

/** What an `apply` made. */
export interface AppliedHyperlayer {
  header: HyperlayerHeader
  /** The blob's sha256 digest, as read. */
  digest: string
  /** The new volume's block identity. */
  identity: string
}

/**
 * Block-level layers ("hyperlayers", docs/hyperlayer.md) on LVM thin volumes: `diff` finds the
 * blocks that differ between two thin volumes of one pool (from `thin_delta`, or by reading
 * both), `apply` writes such a patch into a new thin snapshot of the parent. Both work on
 * read-only volumes only, so that the blocks a patch names cannot change under it.
 *
 * A patch names the block identity (`BLOCKS_TAG`) of the volume it was made against, and
 * applies only on a volume with that identity: a patch on the wrong blocks would make a volume
 * of garbage that mounts.
 */
export class LvmHyperlayers {
  readonly #lvm: LvmCommands
  readonly #runner: CommandRunner
  readonly #log: Logger

  constructor(components: LvmHyperlayersComponents, init: LvmHyperlayersInit) {
    this.#runner = components.runner ?? execFileRunner
    this.#lvm = new LvmCommands(this.#runner, init.vg)
    this.#log = components.logger.child({ component: 'hyperlayer', vg: init.vg })
  }

  /**
   * The blocks that differ between `parent` and `child` (undefined parent: every non-zero block
   * of `child`, a root hyperlayer). Both must be read-only thin volumes of one pool, of one
   * size. A parent without a block identity is given a new, random one (a tag): patches made
   * against it then apply only on it.
   */
  async diff(parent: string | undefined, child: string, options: DiffOptions = {}): Promise<HyperlayerDiff> {
    const all = await this.#lvm.details(options)
    const c = thinVolume(all, child)
    const p = parent === undefined ? undefined : thinVolume(all, parent)
    if (p && p.pool !== c.pool) throw new BadRequestError(`${parent} and ${child} are not in one thin pool`)
    if (p && p.size !== c.size) {
      throw new BadRequestError(`${parent} (${p.size} bytes) and ${child} (${c.size} bytes) differ in size`)
    }
    const pool = all.find((v) => v.name === c.pool)
    if (!pool?.chunkSize) throw new BadRequestError(`cannot find the chunk size of pool ${c.pool}`)
    let identity = p ? tagValue(p.tags, BLOCKS_TAG) : undefined
    if (p && identity === undefined) {
      identity = randomBytes(32).toString('hex')
      await this.#lvm.addTags(p.name, [`${BLOCKS_TAG}${identity}`], options)
      this.#log.info({ volume: p.name, identity }, 'gave the parent volume a block identity')
    }
    const method = options.method ?? 'auto'
    let candidates: Awaited<ReturnType<typeof findThinChanges>> | undefined
    if (method !== 'compare') {
      try {
        candidates = await findThinChanges(this.#runner, { all, pool, parent: p, child: c }, options)
      } catch (err) {
        if (method === 'thin_delta') throw err
        this.#log.warn(
          { reason: toShoalError(err).message },
          'thin_delta failed: comparing the volumes block by block'
        )
      }
    }
    const extents = await compareBlocks(
      {
        ...(p && { parent: p.dmPath }),
        child: c.dmPath,
        blockSize: pool.chunkSize,
        volumeSize: c.size,
        ...(candidates && { candidates })
      },
      options
    )
    const fstype = await this.#fstype(c)
    const header: HyperlayerHeader = {
      blockSize: pool.chunkSize,
      volumeSize: c.size,
      extentCount: extents.length,
      dataBytes: 0,
      ...(fstype && { fstype }),
      ...(identity !== undefined && { parent: identity })
    }
    for (const e of extents) {
      if (e.kind === 'data')
        header.dataBytes +=
          Math.min((e.block + e.count) * header.blockSize, c.size) - e.block * header.blockSize
    }
    this.#log.info(
      {
        parent,
        child,
        method: candidates ? 'thin_delta' : 'compare',
        extents: extents.length,
        bytes: header.dataBytes
      },
      'volumes compared'
    )
    return {
      header,
      extents,
      method: candidates ? 'thin_delta' : 'compare',
      child: c.dmPath,
      stream: () => writeHyperlayer(header, extents, deviceReader(c.dmPath))
    }
  }

  /**
   * Gives `volume` the block identity a hyperlayer of `digest` made from `diff` gives the
   * volume it applies to, when it has none: a later diff against it then names that identity,
   * which is also the one every node that applies the patch gets.
   */
  async adopt(volume: string, header: HyperlayerHeader, digest: string, options: AbortOptions = {}) {
    const v = thinVolume(await this.#lvm.details(options), volume)
    if (tagValue(v.tags, BLOCKS_TAG) !== undefined) return
    await this.#lvm.addTags(volume, [`${BLOCKS_TAG}${blockIdentity(header.parent, digest)}`], options)
  }

  /**
   * Applies a hyperlayer: checks its header and every extent first (`InvalidHyperlayerError`),
   * and that it was made against `parent`'s blocks (`HyperlayerParentMismatchError`); then makes
   * `name`, a thin snapshot of `parent` (a new thin volume of the header's size for a root
   * hyperlayer, in `options.pool`), writes the extents into it and makes it read-only. Any
   * failure removes the half-made volume.
   */
  async apply(
    source: AsyncIterable<Uint8Array>,
    parent: string | undefined,
    name: string,
    options: ApplyOptions = {}
  ): Promise<AppliedHyperlayer> {
    const hash = createHash('sha256')
    const patch = await openHyperlayer(hashing(source, hash))
    const { header } = patch
    const all = await this.#lvm.details(options)
    if (parent !== undefined) {
      const p = thinVolume(all, parent)
      const identity = tagValue(p.tags, BLOCKS_TAG)
      if (header.parent === undefined) {
        throw new HyperlayerParentMismatchError(
          `a root hyperlayer applies on an empty volume, not on ${parent}`
        )
      }
      if (identity !== header.parent) {
        throw new HyperlayerParentMismatchError(
          `the hyperlayer was made against blocks ${header.parent.slice(0, 12)}, ${parent} holds ${identity?.slice(0, 12) ?? 'blocks of no known identity'}`
        )
      }
      if (p.size !== header.volumeSize) {
        throw new InvalidHyperlayerError(
          `the hyperlayer is for ${header.volumeSize} bytes, ${parent} has ${p.size}`
        )
      }
    } else if (header.parent !== undefined) {
      throw new HyperlayerParentMismatchError(
        `the hyperlayer applies on blocks ${header.parent.slice(0, 12)}, not on an empty volume`
      )
    } else if (!options.pool) {
      throw new BadRequestError('a root hyperlayer needs a thin pool to make its volume in')
    }
    if (all.some((v) => v.name === name)) throw new BadRequestError(`volume ${name} already exists`)
    const tags = typeof options.tags === 'function' ? options.tags(header) : [...(options.tags ?? [])]
    if (options.digest) tags.push(`${BLOCKS_TAG}${blockIdentity(header.parent, options.digest)}`)
    if (parent !== undefined) await this.#lvm.snapshot(name, parent, tags)
    else await this.#lvm.createThin(name, options.pool as string, `${header.volumeSize}b`, tags)
    try {
      if (parent === undefined) {
        const made = (await this.#lvm.details(options)).find((v) => v.name === name)
        if (made?.size !== header.volumeSize) {
          throw new InvalidHyperlayerError(
            `the hyperlayer is for ${header.volumeSize} bytes, LVM made a volume of ${made?.size} (extent size)`
          )
        }
      }
      await writeExtents(patch, this.#lvm.device(name), options)
      const digest = `sha256:${hash.digest('hex')}`
      if (options.digest !== undefined && options.digest !== digest) {
        throw new DigestMismatchError(`the hyperlayer's bytes hash to ${digest}, not ${options.digest}`)
      }
      const identity = blockIdentity(header.parent, digest)
      if (options.digest === undefined) await this.#lvm.addTags(name, [`${BLOCKS_TAG}${identity}`])
      await this.#lvm.setReadOnly(name)
      this.#log.info(
        { parent, volume: name, extents: header.extentCount, bytes: header.dataBytes },
        'hyperlayer applied'
      )
      return { header, digest, identity }
    } catch (err) {
      await this.#lvm.remove(name).catch((e: unknown) => {
        this.#log.warn({ volume: name, reason: toShoalError(e).message }, 'cannot remove a failed volume')
      })
      throw toShoalError(err)
    }
  }

  /** The file system of a volume: its tag, or what `blkid` finds. */
  async #fstype(v: VolumeDetails): Promise<HyperlayerFileSystem | undefined> {
    const tagged = tagValue(v.tags, FSTYPE_TAG)
    if (tagged === 'ext4' || tagged === 'xfs') return tagged
    const found = await this.#runner
      .run('blkid', ['-o', 'value', '-s', 'TYPE', v.dmPath])
      .then((o) => o.stdout.trim())
      .catch(() => '')
    return found === 'ext4' || found === 'xfs' ? found : undefined
  }
}

/** A read-only thin volume of the group, by name; `BadRequestError` otherwise. */
function thinVolume(all: VolumeDetails[], name: string): VolumeDetails {
  const v = all.find((x) => x.name === name)
  if (!v) throw new BadRequestError(`no volume ${name}`)
  if (v.attr[0] !== 'V' || v.thinId === undefined) throw new BadRequestError(`${name} is not a thin volume`)
  if (v.attr[1] !== 'r') {
    throw new BadRequestError(
      `${name} is writable: make it read-only (lvchange -pr) so its blocks cannot change`
    )
  }
  if (v.attr[4] !== 'a' || !v.dmPath) throw new BadRequestError(`${name} is not active`)
  return v
}

/** Passes `source` through, hashing every byte. */
async function* hashing(source: AsyncIterable<Uint8Array>, hash: ReturnType<typeof createHash>) {
  for await (const chunk of source) {
    hash.update(chunk)
    yield chunk
  }
}
