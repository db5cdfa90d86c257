import { execFile } from 'node:child_process'
import { mkdir, rename, rm, rmdir } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { CommandOutput, CommandRunner } from '../../../src/materialize/command-runner.ts'

const run = promisify(execFile)

interface FakeVolume {
  name: string
  attr: string
  tags: string[]
  origin: string
  pool: string
}

/**
 * A command runner that plays LVM, mkfs and mount for unit tests, and records every command
 * (`commands`, one string each). Each volume's file system is a directory under `dir`: mkfs
 * makes an empty one (with `lost+found`, as ext4), a snapshot copies its origin's (`cp -a`),
 * mount moves it onto the mount point and umount moves it back. The commands the fake does
 * not know (mknod, setfattr) run for real.
 */
export class FakeLvm implements CommandRunner {
  readonly commands: string[] = []
  readonly vgs = new Set<string>()
  readonly lvs = new Map<string, FakeVolume>()
  /** Volumes LVM must refuse to remove (open elsewhere). */
  readonly open = new Set<string>()
  /** Fails the first command whose line starts with this. */
  failNext: string | undefined
  readonly #dir: string
  readonly #mounted = new Map<string, string>()

  constructor(dir: string) {
    this.#dir = dir
  }

  /** The directory holding a volume's file system (while it is not mounted). */
  tree(lv: string): string {
    return join(this.#dir, lv)
  }

  /** Commands run since `from` that the fake plays (not mknod, setfattr). */
  since(from: number): string[] {
    return this.commands.slice(from).filter((c) => !/^(mknod|setfattr) /.test(c))
  }

  async run(file: string, args: readonly string[]): Promise<CommandOutput> {
    const line = [file, ...args].join(' ')
    this.commands.push(line)
    if (this.failNext && line.startsWith(this.failNext)) {
      this.failNext = undefined
      throw new Error(`${file} failed: injected failure`)
    }
    const a = [...args]
    const opt = (flag: string) => a[a.indexOf(flag) + 1] as string
    const tags = a.flatMap((x, i) => (x === '--addtag' ? [a[i + 1] as string] : []))
    switch (file) {
      case 'vgs':
        return json(
          'vg',
          [...this.vgs].map((vg_name) => ({ vg_name }))
        )
      case 'vgcreate':
        this.vgs.add(a[0] as string)
        return ok()
      case 'lvs':
        return json(
          'lv',
          [...this.lvs.values()].map((v) => ({
            lv_name: v.name,
            lv_attr: v.attr,
            lv_tags: v.tags.join(','),
            origin: v.origin,
            pool_lv: v.pool
          }))
        )
      case 'lvcreate':
        return this.#create(a, opt, tags)
      case 'lvchange': {
        const lv = this.#lv(a.at(-1) as string)
        if (a.includes('-pr')) lv.attr = `${lv.attr[0]}r${lv.attr.slice(2)}`
        if (a.includes('-ay')) lv.attr = `${lv.attr.slice(0, 4)}a${lv.attr.slice(5)}`
        return ok()
      }
      case 'lvrename': {
        const [, from, to] = a as [string, string, string]
        const lv = this.#lv(from)
        this.lvs.delete(from)
        lv.name = to
        this.lvs.set(to, lv)
        for (const v of this.lvs.values()) if (v.origin === from) v.origin = to
        await rename(this.tree(from), this.tree(to))
        return ok()
      }
      case 'lvremove': {
        const name = (a.at(-1) as string).split('/')[1] as string
        this.#lv(name)
        if (this.open.has(name) || [...this.#mounted.values()].includes(name)) {
          throw new Error(`lvremove failed: Logical volume ${name} in use.`)
        }
        this.lvs.delete(name)
        for (const v of this.lvs.values()) if (v.origin === name) v.origin = ''
        await rm(this.tree(name), { recursive: true, force: true })
        return ok()
      }
      case 'mkfs.ext4':
      case 'mkfs.xfs': {
        const tree = this.tree(deviceName(a.at(-1) as string))
        await mkdir(tree, { recursive: true })
        if (file === 'mkfs.ext4') await mkdir(join(tree, 'lost+found'), { mode: 0o700 })
        return ok()
      }
      case 'mount': {
        const [device, mountPoint] = a.slice(-2) as [string, string]
        const name = deviceName(device)
        await rmdir(mountPoint)
        await rename(this.tree(name), mountPoint)
        this.#mounted.set(mountPoint, name)
        return ok()
      }
      case 'umount': {
        const mountPoint = a[0] as string
        const name = this.#mounted.get(mountPoint)
        if (!name) throw new Error(`umount failed: ${mountPoint}: not mounted.`)
        await rename(mountPoint, this.tree(name))
        await mkdir(mountPoint)
        this.#mounted.delete(mountPoint)
        return ok()
      }
      default: {
        const { stdout } = await run(file, a)
        return { stdout }
      }
    }
  }

  async #create(a: string[], opt: (flag: string) => string, tags: string[]): Promise<CommandOutput> {
    const name = a.includes('-n') ? opt('-n') : ''
    if (this.lvs.has(name)) throw new Error(`lvcreate failed: Logical Volume "${name}" already exists`)
    if (a.includes('--type')) {
      this.lvs.set(name, { name, attr: 'twi-aotz--', tags, origin: '', pool: '' })
    } else if (a.includes('-s')) {
      const origin = this.#lv(a.at(-1) as string)
      const skip = a.includes('-kn') ? '-' : 'k'
      this.lvs.set(name, { name, attr: `Vwi-a-tz-${skip}`, tags, origin: origin.name, pool: origin.pool })
      await run('cp', ['-a', this.tree(origin.name), this.tree(name)])
    } else {
      const pool = opt('-T').split('/')[1] as string
      this.lvs.set(name, { name, attr: 'Vwi-a-tz--', tags, origin: '', pool })
    }
    return ok()
  }

  /** A volume by name or `vg/name`. */
  #lv(ref: string): FakeVolume {
    const name = ref.includes('/') ? (ref.split('/')[1] as string) : ref
    const lv = this.lvs.get(name)
    if (!lv) throw new Error(`Failed to find logical volume "${ref}"`)
    return lv
  }
}

function deviceName(device: string): string {
  return device.split('/').at(-1) as string
}

function ok(): CommandOutput {
  return { stdout: '' }
}

function json(kind: string, rows: object[]): CommandOutput {
  return { stdout: JSON.stringify({ report: [{ [kind]: rows }] }) }
}
