import { basename } from 'node:path'
import type { AbortOptions } from '../interface/common.ts'
import type { CommandRunner } from './command-runner.ts'
import type { BlockRange } from './hyperlayer-blocks.ts'
import type { VolumeDetails } from './lvm-thin-lvm.ts'
import { parseThinDelta, parseThinDump } from './thin-xml.ts'

export interface ThinChangesInit {
  /** Every volume of the group, hidden ones too (`lvs -a`). */
  all: VolumeDetails[]
  pool: VolumeDetails
  /** Undefined: the child's mapped blocks (a root hyperlayer). */
  parent?: VolumeDetails | undefined
  child: VolumeDetails
}

/**
 * The blocks (pool chunks) that may differ between two thin volumes, from the pool's metadata:
 * `thin_delta` between their thin ids (`thin_dump` of the child for a root hyperlayer), run on a
 * metadata snapshot, the only consistent view of a live pool's metadata. The snapshot is
 * reserved here and always released; when another is already reserved (another diff, or one a
 * crash left), this fails rather than read a stale one, and the caller compares blocks instead.
 */
export async function findThinChanges(
  runner: CommandRunner,
  init: ThinChangesInit,
  options: AbortOptions = {}
): Promise<BlockRange[]> {
  const { pool, parent, child } = init
  const tmeta = init.all.find((v) => v.name === `[${pool.name}_tmeta]`)?.dmPath
  if (!tmeta || !pool.dmPath) throw new Error(`cannot find the metadata device of pool ${pool.name}`)
  // The pool's device-mapper name with its -tpool suffix, as dmsetup knows it.
  const tpool = `${basename(pool.dmPath)}-tpool`
  await runner.run('dmsetup', ['message', tpool, '0', 'reserve_metadata_snap'], options)
  let output: string
  try {
    output = parent
      ? (
          await runner.run(
            'thin_delta',
            ['-m', '--snap1', String(parent.thinId), '--snap2', String(child.thinId), tmeta],
            options
          )
        ).stdout
      : (await runner.run('thin_dump', ['-m', '--dev-id', String(child.thinId), tmeta], options)).stdout
  } finally {
    // No signal: a metadata snapshot left reserved stops every later diff from using this path.
    await runner.run('dmsetup', ['message', tpool, '0', 'release_metadata_snap'])
  }
  const report = parent ? parseThinDelta(output) : parseThinDump(output)
  if (report.dataBlockSize * 512 !== pool.chunkSize) {
    throw new Error(
      `the pool metadata says ${report.dataBlockSize * 512}-byte blocks, lvs says ${pool.chunkSize}`
    )
  }
  return report.changed
}
