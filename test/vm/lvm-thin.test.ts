/**
 * LvmThinMaterializer on real LVM thin provisioning. Runs only inside the User-Mode Linux
 * guest that `npm run test:vm` boots (scripts/vm/run-in-uml.sh): the host's kernel has no
 * device-mapper, and these tests create a volume group on a whole disk. Outside the guest they
 * fail at once, before any LVM command; the guest's disk, /dev/ubda, cannot exist on a host.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { lstat, readdir, readFile, readlink, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { gzipSync } from 'node:zlib'
import { pino } from 'pino'
import { digestOf } from '../../src/content/digest.ts'
import { putVerifiedBlob } from '../../src/fetch/put-blob.ts'
import type { Materialization } from '../../src/interface/materializer.ts'
import { type CommandRunner, execFileRunner } from '../../src/materialize/command-runner.ts'
import { LvmThinMaterializer, type LvmThinMaterializerInit } from '../../src/materialize/lvm-thin.ts'
import type { LevelBlobStore } from '../../src/store/level-blob-store.ts'
import { type TarSpec, tarOf } from '../unit/materialize/tars.ts'
import { assertInsideGuest, blockDevice, mounted, startGuestStore } from './guest.ts'

const run = promisify(execFile)
const logger = pino({ level: process.env.SHOAL_VM_LOG ?? 'silent' })
/** The guest's scratch disk: a UML block device, which no host has. */
const DEVICE = '/dev/ubda'
const VG = 'shoal-vm'
const POOL = 'pool'
const BASE = '/tmp/shoal-vm'
/** Every LVM command in the guest takes 0.1-1 s. */
const SLOW = { timeout: 120_000 }

/** A runner that keeps every command line, to count what a step ran. */
class RecordingRunner implements CommandRunner {
  readonly commands: string[] = []
  run(file: string, args: readonly string[], options?: { signal?: AbortSignal }) {
    this.commands.push([file, ...args].join(' '))
    return execFileRunner.run(file, args, options)
  }
  count(prefix: string, from = 0): number {
    return this.commands.slice(from).filter((c) => c.startsWith(prefix)).length
  }
}

/** What is compared of one path (inodes and directory mtimes aside). */
interface Node {
  type: string
  mode: number
  uid: number
  gid: number
  sha256?: string
  target?: string
}

async function tree(root: string): Promise<Record<string, Node>> {
  const out: Record<string, Node> = {}
  const walk = async (rel: string) => {
    const path = join(root, rel)
    const st = await lstat(path)
    const type = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other'
    const node: Node = { type, mode: type === 'symlink' ? 0 : st.mode & 0o7777, uid: st.uid, gid: st.gid }
    if (st.isFile())
      node.sha256 = createHash('sha256')
        .update(await readFile(path))
        .digest('hex')
    if (st.isSymbolicLink()) node.target = await readlink(path)
    out[rel === '' ? '/' : rel] = node
    if (st.isDirectory()) for (const name of (await readdir(path)).sort()) await walk(join(rel, name))
  }
  await walk('')
  return out
}

const sha = (s: string) => createHash('sha256').update(s).digest('hex')
const f = (mode: number, content: string, uid = 0, gid = 0): Node => ({
  type: 'file',
  mode,
  uid,
  gid,
  sha256: sha(content)
})
const d = (mode: number, uid = 0, gid = 0): Node => ({ type: 'dir', mode, uid, gid })
const l = (target: string): Node => ({ type: 'symlink', mode: 0, uid: 0, gid: 0, target })

const file = (name: string, data: string, mode = 0o644, uid = 0, gid = 0): TarSpec => ({
  header: { name, type: 'file', mode, uid, gid },
  data
})
const dir = (name: string, mode = 0o755, uid = 0, gid = 0): TarSpec => ({
  header: { name, type: 'directory', mode, uid, gid }
})
const symlink = (name: string, target: string): TarSpec => ({
  header: { name, type: 'symlink', linkname: target }
})
const hardlink = (name: string, target: string): TarSpec => ({
  header: { name, type: 'link', linkname: target }
})
const BIG = 'shoal '.repeat(200_000)

const LAYER1 = [
  dir('./'),
  dir('bin/'),
  file('bin/tool', '#!/bin/sh\necho hi\n', 0o4755),
  hardlink('bin/tool-hl', 'bin/tool'),
  symlink('bin/sh', 'tool'),
  dir('etc/'),
  file('etc/hostname', 'base\n'),
  file('etc/shadow', 'secret\n', 0o640, 0, 42),
  file('etc/gone', 'deleted by layer 2\n'),
  dir('etc/olddir/'),
  file('etc/olddir/f', 'f'),
  dir('home/'),
  dir('home/user/', 0o700, 1000, 1000),
  file('home/user/notes', 'n', 0o600, 1000, 1000),
  dir('opaque/'),
  file('opaque/a', 'a'),
  dir('opaque/sub/'),
  file('opaque/sub/b', 'b'),
  dir('usr/'),
  dir('usr/lib/'),
  file('usr/lib/libc.so', 'libc'),
  symlink('lib', 'usr/lib'),
  dir('tmp/', 0o1777)
]
const LAYER2 = [
  file('etc/.wh.gone', ''),
  file('etc/.wh.olddir', ''),
  file('etc/hostname', 'layer2\n', 0o600),
  file('opaque/.wh..wh..opq', ''),
  file('opaque/c', 'c'),
  dir('usr/bin/'),
  file('usr/bin/new', 'new', 0o755),
  hardlink('usr/bin/new-hl', 'usr/bin/new'),
  symlink('bin/sh', '/bin/busybox'),
  file('home/user/.wh.notes', '')
]
const LAYER3 = [file('etc/l3', 'three', 0o444, 5, 6), dir('tmp/', 0o1777), file('big', BIG)]
const LAYER4 = [file('etc/l4', 'four')]

/** The tree of LAYER1 + LAYER2 + LAYER3. */
const EXPECTED: Record<string, Node> = {
  '/': d(0o755),
  big: f(0o644, BIG),
  bin: d(0o755),
  'bin/sh': l('/bin/busybox'),
  'bin/tool': f(0o4755, '#!/bin/sh\necho hi\n'),
  'bin/tool-hl': f(0o4755, '#!/bin/sh\necho hi\n'),
  etc: d(0o755),
  'etc/hostname': f(0o600, 'layer2\n'),
  'etc/l3': f(0o444, 'three', 5, 6),
  'etc/shadow': f(0o640, 'secret\n', 0, 42),
  home: d(0o755),
  'home/user': d(0o700, 1000, 1000),
  lib: l('usr/lib'),
  opaque: d(0o755),
  'opaque/c': f(0o644, 'c'),
  tmp: d(0o1777),
  usr: d(0o755),
  'usr/bin': d(0o755),
  'usr/bin/new': f(0o755, 'new'),
  'usr/bin/new-hl': f(0o755, 'new'),
  'usr/lib': d(0o755),
  'usr/lib/libc.so': f(0o644, 'libc')
}

describe('LvmThinMaterializer on real LVM thin volumes (UML guest)', SLOW, () => {
  let store: LevelBlobStore
  let runner: RecordingRunner
  let m: LvmThinMaterializer
  let layers: string[]
  let imageA: string[]
  let imageB: string[]
  let a: Materialization
  const init: LvmThinMaterializerInit = {
    vg: VG,
    pool: POOL,
    device: DEVICE,
    volumeSize: '1G',
    mountDir: join(BASE, 'building')
  }
  const make = (extra: Partial<LvmThinMaterializerInit> = {}) =>
    new LvmThinMaterializer({ store, logger, runner }, { ...init, ...extra })

  async function layerVolumes(): Promise<string[]> {
    const { stdout } = await run('lvs', ['--reportformat', 'json', '-o', 'lv_name,lv_attr', VG])
    const rows = JSON.parse(stdout).report[0].lv as Array<{ lv_name: string }>
    return rows.map((r) => r.lv_name).filter((n) => n.startsWith('shoal-layer-'))
  }
  async function attrOf(device: string): Promise<string> {
    const { stdout } = await run('lvs', ['--noheadings', '-o', 'lv_attr', device])
    return stdout.trim()
  }
  async function put(entries: TarSpec[]): Promise<string> {
    const bytes = gzipSync(await tarOf(entries))
    const digest = digestOf(bytes)
    await putVerifiedBlob(store, digest, bytes, { source: 'registry' })
    return digest
  }

  before(async () => {
    assertInsideGuest([DEVICE])
    store = await startGuestStore(BASE, logger)
    layers = [await put(LAYER1), await put(LAYER2), await put(LAYER3), await put(LAYER4)]
    imageA = layers.slice(0, 3)
    imageB = [layers[0], layers[1], layers[3]] as string[]
    runner = new RecordingRunner()
    m = make()
    await m.start()
  })
  after(async () => {
    await m?.stop()
    await store?.stop()
  })

  it('materializes a multi-layer image as a read-only volume holding its merged tree', SLOW, async () => {
    a = await m.materialize(imageA)
    assert.equal(a.driver, 'lvm-thin')
    assert.deepEqual(a.mount, { type: 'block', device: a.layers[2]?.path, fstype: 'ext4' })
    assert.equal((await layerVolumes()).length, 3)
    for (const layer of a.layers)
      assert.match(await attrOf(layer.path), /^Vri-a-tz/, 'thin, read-only, active')
    await mounted(BASE, blockDevice(a), 'ro', async (root) => {
      assert.deepEqual(await tree(root), EXPECTED)
      const [tool, toolHl, n, nHl] = await Promise.all(
        ['bin/tool', 'bin/tool-hl', 'usr/bin/new', 'usr/bin/new-hl'].map((p) => lstat(join(root, p)))
      )
      assert.equal(tool?.ino, toolHl?.ino, 'the base layer hard link is one inode')
      assert.equal(n?.ino, nHl?.ino, 'the upper layer hard link is one inode')
      await assert.rejects(writeFile(join(root, 'x'), 'x'), { code: 'EROFS' })
    })
    // The layer below is untouched by what the layers above deleted.
    await mounted(BASE, a.layers[0]?.path as string, 'ro', async (root) => {
      assert.equal(await readFile(join(root, 'etc/gone'), 'utf8'), 'deleted by layer 2\n')
      assert.deepEqual((await readdir(join(root, 'opaque'))).sort(), ['a', 'sub'])
    })
    assert.equal(
      (await run('blockdev', ['--getro', blockDevice(a)])).stdout.trim(),
      '1',
      'a read-only device'
    )
  })

  it('shares the volumes of the layers two images have in common', SLOW, async () => {
    const from = runner.commands.length
    const b = await m.materialize(imageB)
    assert.equal(runner.count('lvcreate', from), 1, 'only the new top layer is built')
    assert.deepEqual(
      b.layers.slice(0, 2).map((x) => x.path),
      a.layers.slice(0, 2).map((x) => x.path)
    )
    assert.notEqual(blockDevice(b), blockDevice(a))
    assert.equal((await layerVolumes()).length, 4)
    await mounted(BASE, blockDevice(b), 'ro', async (root) => {
      assert.equal(await readFile(join(root, 'etc/l4'), 'utf8'), 'four')
      assert.equal(await readFile(join(root, 'etc/hostname'), 'utf8'), 'layer2\n')
      await assert.rejects(lstat(join(root, 'etc/l3')), { code: 'ENOENT' })
    })
  })

  it('gives a container a writable volume whose writes stay out of the layer volume', SLOW, async () => {
    const c = await m.createContainerVolume(imageA, 'ctr1')
    assert.match(await attrOf(c.device), /^Vwi-a-tz/)
    await mounted(BASE, c.device, 'rw', async (root) => {
      await writeFile(join(root, 'written-by-container'), 'w')
      await unlink(join(root, 'etc/l3'))
      await writeFile(join(root, 'etc/hostname'), 'container\n')
    })
    await mounted(BASE, c.device, 'ro', async (root) => {
      assert.equal(await readFile(join(root, 'written-by-container'), 'utf8'), 'w', 'writes persist')
    })
    await mounted(BASE, blockDevice(a), 'ro', async (root) => {
      assert.deepEqual(await tree(root), EXPECTED, 'the layer volume is as it was')
    })
    await m.release(imageA)
    assert.deepEqual(await m.prune(), [], "the container's volume holds its image")
    assert.equal(await m.removeContainerVolume('ctr1'), true)
  })

  it('prunes what no one holds, children before parents', SLOW, async () => {
    assert.deepEqual(await m.prune(), [layers[2]], "only image A's own top goes; B holds the rest")
    assert.equal((await layerVolumes()).length, 3)
    await m.release(imageB)
    assert.deepEqual(await m.prune(), [layers[3], layers[1], layers[0]])
    assert.deepEqual(await layerVolumes(), [])
  })

  it('finds its volumes after a restart and removes what a crash left half built', SLOW, async () => {
    await m.materialize(imageA)
    await m.stop()
    await run('lvcreate', ['-q', '-V', '1G', '-T', `${VG}/${POOL}`, '-n', `shoal-tmp-${'0'.repeat(64)}`])
    m = make()
    await m.start()
    assert.ok(!(await run('lvs', [VG])).stdout.includes('shoal-tmp-'), 'the unfinished volume is gone')
    const from = runner.commands.length
    const again = await m.materialize(imageA)
    assert.equal(runner.count('lvcreate', from), 0, 'nothing is rebuilt')
    assert.deepEqual(again, a)
    await m.release(imageA)
    assert.equal((await m.prune()).length, 3)
  })

  it('builds XFS volumes too', SLOW, async () => {
    const xfs = make({ fstype: 'xfs' })
    await xfs.start()
    const image = [await put([file('x1', 'one')]), await put([file('.wh.x1', ''), file('x2', 'two')])]
    const mz = await xfs.materialize(image)
    assert.deepEqual(mz.mount, {
      type: 'block',
      device: mz.layers[1]?.path,
      fstype: 'xfs',
      options: ['nouuid']
    })
    await mounted(
      BASE,
      blockDevice(mz),
      ['ro', ...(mz.mount.type === 'block' ? (mz.mount.options ?? []) : [])].join(','),
      async (root) => {
        assert.deepEqual(await readdir(root), ['x2'])
      }
    )
    await xfs.release(image)
    assert.equal((await xfs.prune()).length, 2)
    await xfs.stop()
  })
})
