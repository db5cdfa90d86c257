import type { AbortOptions } from '../interface/common.ts'
import type { CommandRunner } from './command-runner.ts'

/** One logical volume as `lvs` reports it. */
export interface LogicalVolume {
  name: string
  /** `lv_attr`: [0] type (`V` thin, `t` pool), [1] permission (`w`/`r`), [4] state (`a` active). */
  attr: string
  tags: string[]
  /** The volume it is a snapshot of, while that still exists ('' otherwise). */
  origin: string
  /** The thin pool it lives in ('' for the pool itself). */
  pool: string
}

/** A volume with what the block-level layer code needs: sizes, thin device id, device-mapper path. */
export interface VolumeDetails extends LogicalVolume {
  /** Bytes. */
  size: number
  /** The thin device id in the pool's metadata (thin volumes only). */
  thinId?: number
  /** The pool's chunk size in bytes (pools only; 0 otherwise). */
  chunkSize: number
  /** `/dev/mapper/<vg>-<lv>` (with the hyphens device-mapper doubles). */
  dmPath: string
}

/** True when `lvs` reports the volume active. */
export function isActive(lv: LogicalVolume): boolean {
  return lv.attr[4] === 'a'
}

/**
 * The LVM commands the thin materializer runs, all in one volume group, through the injected
 * runner. Nothing here depends on udev or dmeventd: libdevmapper makes the `/dev/<vg>/<lv>`
 * links itself when udev is not there to (see docs/decisions/0008).
 */
export class LvmCommands {
  readonly #runner: CommandRunner
  readonly vg: string

  constructor(runner: CommandRunner, vg: string) {
    this.#runner = runner
    this.vg = vg
  }

  /** The device path of a volume (a link libdevmapper or udev makes when it is active). */
  device(name: string): string {
    return `/dev/${this.vg}/${name}`
  }

  /** True when the volume group exists. */
  async hasVolumeGroup(options: AbortOptions = {}): Promise<boolean> {
    const { stdout } = await this.#run('vgs', ['--reportformat', 'json', '-o', 'vg_name'], options)
    return report(stdout, 'vg').some((vg) => vg.vg_name === this.vg)
  }

  /** Makes `device` a physical volume and the volume group on it. */
  async createVolumeGroup(device: string, options: AbortOptions = {}): Promise<void> {
    await this.#run('vgcreate', [this.vg, device], options)
  }

  /** Creates the thin pool; `size` is a size (`20G`) or a share of the group (`95%FREE`). */
  async createPool(pool: string, size: string, options: AbortOptions = {}): Promise<void> {
    const extent = size.includes('%') ? ['-l', size] : ['-L', size]
    await this.#run('lvcreate', ['--type', 'thin-pool', ...extent, '-n', pool, this.vg], options)
  }

  /** The group's (visible) volumes. */
  async volumes(options: AbortOptions = {}): Promise<LogicalVolume[]> {
    const fields = 'lv_name,lv_attr,lv_tags,origin,pool_lv'
    const { stdout } = await this.#run('lvs', ['--reportformat', 'json', '-o', fields, this.vg], options)
    return report(stdout, 'lv').map((lv) => ({
      name: lv.lv_name ?? '',
      attr: lv.lv_attr ?? '',
      tags: lv.lv_tags ? lv.lv_tags.split(',') : [],
      origin: lv.origin ?? '',
      pool: lv.pool_lv ?? ''
    }))
  }

  /**
   * Every volume of the group, hidden ones too (`[pool_tmeta]`), with sizes in bytes, thin ids
   * and device-mapper paths.
   */
  async details(options: AbortOptions = {}): Promise<VolumeDetails[]> {
    const fields = 'lv_name,lv_attr,lv_tags,origin,pool_lv,lv_size,thin_id,chunk_size,lv_dm_path'
    const { stdout } = await this.#run(
      'lvs',
      ['-a', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', fields, this.vg],
      options
    )
    return report(stdout, 'lv').map((lv) => {
      const v: VolumeDetails = {
        name: lv.lv_name ?? '',
        attr: lv.lv_attr ?? '',
        tags: lv.lv_tags ? lv.lv_tags.split(',') : [],
        origin: lv.origin ?? '',
        pool: lv.pool_lv ?? '',
        size: bytes(lv.lv_size),
        chunkSize: bytes(lv.chunk_size),
        dmPath: lv.lv_dm_path ?? ''
      }
      if (lv.thin_id && /^\d+$/.test(lv.thin_id.trim())) v.thinId = Number(lv.thin_id.trim())
      return v
    })
  }

  /** Adds tags to a volume. */
  async addTags(name: string, tags: string[], options: AbortOptions = {}) {
    await this.#run('lvchange', [...addTags(tags), `${this.vg}/${name}`], options)
  }

  /** A new thin volume of virtual size `size` in `pool`, active, read-write. */
  async createThin(name: string, pool: string, size: string, tags: string[], options: AbortOptions = {}) {
    await this.#run(
      'lvcreate',
      ['-V', size, '-T', `${this.vg}/${pool}`, '-n', name, ...addTags(tags)],
      options
    )
  }

  /**
   * A thin snapshot of `origin`, active, read-write. `-kn` leaves off the activation-skip flag
   * LVM gives snapshots, which would keep it (and every later activation) inactive.
   */
  async snapshot(name: string, origin: string, tags: string[], options: AbortOptions = {}) {
    await this.#run('lvcreate', ['-s', '-kn', '-n', name, ...addTags(tags), `${this.vg}/${origin}`], options)
  }

  /** Makes the volume read-only (in the metadata, and its active device at once). */
  async setReadOnly(name: string, options: AbortOptions = {}) {
    await this.#run('lvchange', ['-pr', `${this.vg}/${name}`], options)
  }

  /** Renames a volume (active or not). */
  async rename(from: string, to: string, options: AbortOptions = {}) {
    await this.#run('lvrename', [this.vg, from, to], options)
  }

  /** Activates a volume, even one with the activation-skip flag (`-K`). */
  async activate(name: string, options: AbortOptions = {}) {
    await this.#run('lvchange', ['-ay', '-K', `${this.vg}/${name}`], options)
  }

  /** Removes a volume; LVM refuses one that is open (mounted), whatever `-f` says. */
  async remove(name: string, options: AbortOptions = {}) {
    await this.#run('lvremove', ['-f', `${this.vg}/${name}`], options)
  }

  #run(file: string, args: string[], options: AbortOptions) {
    return this.#runner.run(file, args, options)
  }
}

function addTags(tags: string[]): string[] {
  return tags.flatMap((t) => ['--addtag', t])
}

/** A `--units b --nosuffix` size ('' or unparsable: 0). */
function bytes(v: string | undefined): number {
  const n = Number((v ?? '').trim())
  return Number.isSafeInteger(n) && n > 0 ? n : 0
}

/** The rows of a `--reportformat json` report (`{"report": [{"lv": [...]}]}`). */
function report(stdout: string, kind: 'lv' | 'vg'): Array<Record<string, string | undefined>> {
  let parsed: unknown
  try {
    parsed = JSON.parse(stdout)
  } catch (err) {
    throw new Error(`cannot parse the LVM report: ${(err as Error).message}`, { cause: err })
  }
  const sections = (parsed as { report?: unknown }).report
  if (!Array.isArray(sections)) throw new Error('the LVM report has no "report" list')
  return sections.flatMap((s) => {
    const rows = (s as Record<string, unknown>)[kind]
    return Array.isArray(rows) ? (rows as Array<Record<string, string | undefined>>) : []
  })
}
