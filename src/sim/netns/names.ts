/**
 * Names of what one protocol-level run makes: every namespace, link and scratch directory
 * starts with the run's prefix `shl<4 hex>-`, so a run removes exactly its own, and a later run
 * can find what an interrupted one left behind.
 */
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'

/** Where runs keep their files (configs, stores, logs): one directory per prefix. */
export const SCRATCH_ROOT = '/tmp/shoal-netns'

/** A run prefix: `shl`, four hex digits, a dash. */
export const RUN_PREFIX = /^shl[0-9a-f]{4}-/

/** A fresh run prefix, e.g. `shl3f9a-`. */
export function newRunPrefix(): string {
  return `shl${randomBytes(2).toString('hex')}-`
}

/** The run prefix a name starts with, if any. */
export function prefixOf(name: string): string | undefined {
  return RUN_PREFIX.exec(name)?.[0]
}

/** The names one run uses: at most 15 characters each (the kernel's limit for links). */
export interface RunNames {
  prefix: string
  /** The run's scratch directory. */
  dir: string
  hub: string
  bridge: string
  registry: { ns: string; dev: string; hubDev: string }
  node(i: number): { ns: string; dev: string; hubDev: string }
}

/** The names of the run with `prefix`. */
export function runNames(prefix: string): RunNames {
  if (!RUN_PREFIX.test(prefix) || prefix.length !== 8) throw new RangeError(`bad run prefix ${prefix}`)
  return {
    prefix,
    dir: join(SCRATCH_ROOT, prefix.slice(0, -1)),
    hub: `${prefix}hub`,
    bridge: `${prefix}br`,
    registry: { ns: `${prefix}reg`, dev: `${prefix}nr`, hubDev: `${prefix}hr` },
    node: (i) => {
      if (!Number.isInteger(i) || i < 0 || i > 9999) throw new RangeError(`node index ${i} out of range`)
      return { ns: `${prefix}n${i}`, dev: `${prefix}n${i}`, hubDev: `${prefix}h${i}` }
    }
  }
}
