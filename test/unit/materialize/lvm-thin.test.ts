import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, afterEach, before, beforeEach, describe, it } from 'node:test'
import { gzipSync } from 'node:zlib'
import { pino } from 'pino'
import { digestOf } from '../../../src/content/digest.ts'
import { BlobUnknownError, ConfigInvalidError, UnsafeLayerError } from '../../../src/errors.ts'
import { putVerifiedBlob } from '../../../src/fetch/put-blob.ts'
import type { MaterializeProgress } from '../../../src/interface/materializer.ts'
import { LvmThinMaterializer, type LvmThinMaterializerInit } from '../../../src/materialize/lvm-thin.ts'
import { chainLayers } from '../../../src/materialize/lvm-thin-names.ts'
import { MemoryBlobStore } from '../../../src/store/memory-blob-store.ts'
import { FakeLvm } from './fake-lvm.ts'
import { type TarSpec, tarOf } from './tars.ts'

const logger = pino({ level: 'silent' })
const VG = 'vg0'
const POOL = 'pool0'

const file = (name: string, data = 'x', mode = 0o644): TarSpec => ({
  header: { name, type: 'file', mode },
  data
})

/** sha256 hex of a string. */
const sha = (s: string) => createHash('sha256').update(s).digest('hex')

describe('LvmThinMaterializer (against a fake LVM)', () => {
  let base: string
  let dir: string
  let lvm: FakeLvm
  let store: MemoryBlobStore
  let m: LvmThinMaterializer
  let mountDir: string

  async function layer(entries: TarSpec[]): Promise<string> {
    const bytes = gzipSync(await tarOf(entries))
    const digest = digestOf(bytes)
    await putVerifiedBlob(store, digest, bytes, { source: 'registry' })
    return digest
  }
  const make = (init: Partial<LvmThinMaterializerInit> = {}) =>
    new LvmThinMaterializer({ store, logger, runner: lvm }, { vg: VG, pool: POOL, mountDir, ...init })
  const chainsOf = (digests: string[]) => chainLayers(digests).map((l) => l.chain)
  const layerNames = () => [...lvm.lvs.keys()].filter((n) => n.startsWith('shoal-layer-')).sort()

  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'shoal-lvm-unit-'))
  })
  after(async () => {
    await rm(base, { recursive: true, force: true })
  })
  beforeEach(async () => {
    dir = await mkdtemp(join(base, 't-'))
    mountDir = join(dir, 'mnt')
    lvm = new FakeLvm(join(dir, 'volumes'))
    await mkdir(join(dir, 'volumes'))
    store = new MemoryBlobStore({ clock: { now: () => 1 }, logger }, { quotaBytes: 64 * 1024 * 1024 })
    await store.start()
    m = make({ device: '/dev/fake' })
    await m.start()
  })
  afterEach(async () => {
    await m.stop()
  })

  it('creates the volume group and the thin pool on the given device', () => {
    assert.deepEqual(lvm.commands, [
      'vgs --reportformat json -o vg_name',
      `vgcreate ${VG} /dev/fake`,
      `lvs --reportformat json -o lv_name,lv_attr,lv_tags,origin,pool_lv ${VG}`,
      `lvcreate --type thin-pool -l 95%FREE -n ${POOL} ${VG}`,
      `lvs --reportformat json -o lv_name,lv_attr,lv_tags,origin,pool_lv ${VG}`
    ])
  })

  it('refuses to start without a volume group or pool when no device is given', async () => {
    await assert.rejects(make({ vg: 'missing' }).start(), ConfigInvalidError)
    await assert.rejects(make({ pool: 'missing' }).start(), ConfigInvalidError)
    await assert.rejects(make({ vg: '-bad' }).start(), ConfigInvalidError)
  })

  it('builds a base volume and a snapshot per layer, with the exact commands', async () => {
    const l1 = await layer([file('etc/a', 'a'), file('etc/gone', 'g'), file('opq/old', 'o')])
    const l2 = await layer([file('etc/.wh.gone', ''), file('opq/.wh..wh..opq', ''), file('opq/new', 'n')])
    const [c1, c2] = chainsOf([l1, l2]) as [string, string]
    assert.equal(c1, l1.slice(7), "the bottom layer's chain ID is its digest")
    assert.equal(c2, sha(`sha256:${c1} ${l2}`))
    const from = lvm.commands.length
    const progress: MaterializeProgress[] = []
    const result = await m.materialize([l1, l2], { onProgress: (p) => progress.push(p) })
    const mnt = (c: string) => join(mountDir, `shoal-tmp-${c}`)
    assert.deepEqual(lvm.since(from), [
      `lvcreate -V 10G -T ${VG}/${POOL} -n shoal-tmp-${c1} --addtag shoal.digest=${l1} --addtag shoal.fstype=ext4`,
      `mkfs.ext4 -q -E nodiscard /dev/${VG}/shoal-tmp-${c1}`,
      `mount -t ext4 /dev/${VG}/shoal-tmp-${c1} ${mnt(c1)}`,
      `umount ${mnt(c1)}`,
      `lvchange -pr ${VG}/shoal-tmp-${c1}`,
      `lvrename ${VG} shoal-tmp-${c1} shoal-layer-${c1}`,
      `lvcreate -s -kn -n shoal-tmp-${c2} --addtag shoal.digest=${l2} --addtag shoal.fstype=ext4 ` +
        `--addtag shoal.parent=${c1} ${VG}/shoal-layer-${c1}`,
      `mount -t ext4 /dev/${VG}/shoal-tmp-${c2} ${mnt(c2)}`,
      `umount ${mnt(c2)}`,
      `lvchange -pr ${VG}/shoal-tmp-${c2}`,
      `lvrename ${VG} shoal-tmp-${c2} shoal-layer-${c2}`
    ])
    assert.deepEqual(result, {
      driver: 'lvm-thin',
      layers: [
        { digest: l1, path: `/dev/${VG}/shoal-layer-${c1}` },
        { digest: l2, path: `/dev/${VG}/shoal-layer-${c2}` }
      ],
      mount: { type: 'block', device: `/dev/${VG}/shoal-layer-${c2}`, fstype: 'ext4' }
    })
    assert.deepEqual(
      progress.map((p) => [p.digest, p.done, p.total]),
      [
        [l1, 1, 2],
        [l2, 2, 2]
      ]
    )
    // The top volume holds the merged tree: whiteouts deleted, the opaque directory emptied.
    const top = lvm.tree(`shoal-layer-${c2}`)
    assert.deepEqual((await readdir(top)).sort(), ['etc', 'opq'], 'no lost+found')
    assert.deepEqual(await readdir(join(top, 'etc')), ['a'])
    assert.deepEqual(await readdir(join(top, 'opq')), ['new'])
    assert.deepEqual(await readdir(lvm.tree(`shoal-layer-${c1}`)).then((n) => n.sort()), ['etc', 'opq'])
    assert.deepEqual((await readdir(join(lvm.tree(`shoal-layer-${c1}`), 'etc'))).sort(), ['a', 'gone'])
    for (const c of [c1, c2]) assert.equal(lvm.lvs.get(`shoal-layer-${c}`)?.attr[1], 'r', 'read-only')
    assert.deepEqual(await readdir(mountDir), [], 'mount points are removed')
  })

  it('shares the volumes of a common bottom, and names a layer by its parent chain', async () => {
    const l1 = await layer([file('one')])
    const l2 = await layer([file('two')])
    const l3 = await layer([file('three')])
    const l4 = await layer([file('four')])
    await m.materialize([l1, l2, l3])
    assert.equal(layerNames().length, 3)
    const from = lvm.commands.length
    const b = await m.materialize([l1, l2, l4])
    assert.equal(
      lvm.since(from).filter((c) => c.startsWith('lvcreate')).length,
      1,
      'only the new top is built'
    )
    assert.equal(layerNames().length, 4)
    assert.deepEqual(
      b.layers.slice(0, 2).map((l) => l.path),
      chainsOf([l1, l2]).map((c) => `/dev/${VG}/shoal-layer-${c}`)
    )
    // l4 on l1 alone is another volume than l4 on l1, l2.
    const c = await m.materialize([l1, l4])
    assert.equal(layerNames().length, 5)
    assert.notEqual(c.mount.type === 'block' && c.mount.device, b.mount.type === 'block' && b.mount.device)
    const refs = new Map(m.volumes().map((v) => [v.digest + (v.parent ?? ''), v.references]))
    assert.equal(refs.get(l1), 3)
    assert.equal(m.volumes().find((v) => v.chain === chainsOf([l1, l2])[1])?.references, 2)
  })

  it('builds a volume once for concurrent callers', async () => {
    const l1 = await layer([file('one')])
    const l2 = await layer([file('two')])
    const from = lvm.commands.length
    const [a, b] = await Promise.all([m.materialize([l1, l2]), m.materialize([l1, l2])])
    assert.deepEqual(a, b)
    assert.equal(lvm.since(from).filter((c) => c.startsWith('lvcreate')).length, 2)
    assert.deepEqual(
      m.volumes().map((v) => v.references),
      [2, 2]
    )
  })

  it('prunes children before parents, and keeps what is held or has snapshots', async () => {
    const l1 = await layer([file('one')])
    const l2 = await layer([file('two')])
    const l3 = await layer([file('three')])
    const l4 = await layer([file('four')])
    const [c1, c2, c3] = chainsOf([l1, l2, l3]) as [string, string, string]
    const c4 = chainsOf([l1, l2, l4])[2] as string
    await m.materialize([l1, l2, l3])
    await m.materialize([l1, l2, l4])
    await m.release([l1, l2, l3])
    let from = lvm.commands.length
    assert.deepEqual(await m.prune(), [l3], 'only the unshared top goes')
    assert.deepEqual(
      lvm.since(from).filter((c) => c.startsWith('lvremove')),
      [`lvremove -f ${VG}/shoal-layer-${c3}`]
    )
    await m.createContainerVolume([l1, l2, l4], 'ctr1')
    await m.release([l1, l2, l4])
    assert.deepEqual(await m.prune(), [], 'a container volume holds its image')
    assert.equal(await m.removeContainerVolume('ctr1'), true)
    from = lvm.commands.length
    assert.deepEqual(await m.prune(), [l4, l2, l1])
    assert.deepEqual(
      lvm.since(from).filter((c) => c.startsWith('lvremove')),
      [c4, c2, c1].map((c) => `lvremove -f ${VG}/shoal-layer-${c}`)
    )
    assert.deepEqual(layerNames(), [])
  })

  it('keeps a volume LVM will not remove, and its parents', async () => {
    const l1 = await layer([file('one')])
    const l2 = await layer([file('two')])
    const [c1, c2] = chainsOf([l1, l2]) as [string, string]
    await m.materialize([l1, l2])
    await m.release([l1, l2])
    lvm.open.add(`shoal-layer-${c2}`)
    assert.deepEqual(await m.prune(), [])
    assert.deepEqual(layerNames(), [`shoal-layer-${c1}`, `shoal-layer-${c2}`].sort())
    lvm.open.clear()
    assert.deepEqual(await m.prune(), [l2, l1])
  })

  it('keeps a volume that an unknown snapshot still needs', async () => {
    const l1 = await layer([file('one')])
    const [c1] = chainsOf([l1]) as [string]
    await m.materialize([l1])
    await m.release([l1])
    await lvm.run('lvcreate', ['-s', '-n', 'someone-else', `${VG}/shoal-layer-${c1}`])
    assert.deepEqual(await m.prune(), [])
  })

  it('gives a writable container volume, and refuses a bad or taken name', async () => {
    const l1 = await layer([file('one', '1')])
    const [c1] = chainsOf([l1]) as [string]
    const from = lvm.commands.length
    const v = await m.createContainerVolume([l1], 'web-1')
    assert.deepEqual(v, { name: 'web-1', device: `/dev/${VG}/shoal-ctr-web-1`, fstype: 'ext4' })
    assert.ok(
      lvm
        .since(from)
        .includes(
          `lvcreate -s -kn -n shoal-ctr-web-1 --addtag shoal.parent=${c1} --addtag shoal.fstype=ext4 ${VG}/shoal-layer-${c1}`
        )
    )
    assert.equal(lvm.lvs.get('shoal-ctr-web-1')?.attr[1], 'w')
    assert.equal(m.volumes()[0]?.references, 0, 'the container holds the volume by being its snapshot')
    await assert.rejects(m.createContainerVolume([l1], 'web-1'), { code: 'BAD_REQUEST' })
    await assert.rejects(m.createContainerVolume([l1], '../x'), { code: 'BAD_REQUEST' })
    assert.deepEqual(m.containerVolumes(), [v])
    assert.equal(await m.removeContainerVolume('web-1'), true)
    assert.equal(await m.removeContainerVolume('web-1'), false)
  })

  it('finds its volumes again after a restart, from their names and tags', async () => {
    const l1 = await layer([file('one')])
    const l2 = await layer([file('two')])
    await m.materialize([l1, l2])
    await m.createContainerVolume([l1, l2], 'c')
    await m.stop()
    // After a reboot the volumes are inactive.
    for (const lv of lvm.lvs.values()) lv.attr = `${lv.attr.slice(0, 4)}-${lv.attr.slice(5)}`
    m = make()
    await m.start()
    assert.deepEqual(
      m.volumes().map((v) => [v.digest, v.references]),
      [
        [l1, 0],
        [l2, 0]
      ]
    )
    assert.deepEqual(
      m.containerVolumes().map((c) => c.name),
      ['c']
    )
    const from = lvm.commands.length
    await m.materialize([l1, l2])
    assert.deepEqual(
      lvm.since(from),
      chainsOf([l1, l2]).map((c) => `lvchange -ay -K ${VG}/shoal-layer-${c}`),
      'nothing is rebuilt; inactive volumes are activated'
    )
  })

  it('leaves alone a volume whose tags do not match its name', async () => {
    const l1 = await layer([file('one')])
    const l2 = await layer([file('two')])
    await lvm.run('lvcreate', [
      '-V',
      '1G',
      '-T',
      `${VG}/${POOL}`,
      '-n',
      `shoal-layer-${l2.slice(7)}`,
      '--addtag',
      `shoal.digest=${l1}`
    ])
    m = make()
    await m.start()
    assert.deepEqual(m.volumes(), [])
    assert.deepEqual(await m.prune(), [])
    assert.ok(lvm.lvs.has(`shoal-layer-${l2.slice(7)}`))
  })

  it('removes the volumes a crash left half built, unmounting them first', async () => {
    const chain = 'c'.repeat(64)
    await lvm.run('lvcreate', ['-V', '1G', '-T', `${VG}/${POOL}`, '-n', `shoal-tmp-${chain}`])
    await lvm.run('mkfs.ext4', [`/dev/${VG}/shoal-tmp-${chain}`])
    const mountPoint = join(mountDir, `shoal-tmp-${chain}`)
    await mkdir(mountPoint)
    await lvm.run('mount', ['-t', 'ext4', `/dev/${VG}/shoal-tmp-${chain}`, mountPoint])
    const from = lvm.commands.length
    m = make()
    await m.start()
    assert.deepEqual(lvm.since(from).slice(-2), [
      `umount ${mountPoint}`,
      `lvremove -f ${VG}/shoal-tmp-${chain}`
    ])
    assert.ok(!lvm.lvs.has(`shoal-tmp-${chain}`))
    assert.deepEqual(await readdir(mountDir), [])
  })

  it('removes the volume of a layer that fails, and takes no reference', async () => {
    const good = await layer([file('good')])
    const bad = await layer([file('../escape')])
    await assert.rejects(m.materialize([good, bad]), UnsafeLayerError)
    const [c1, c2] = chainsOf([good, bad]) as [string, string]
    assert.ok(lvm.commands.includes(`lvremove -f ${VG}/shoal-tmp-${c2}`))
    assert.deepEqual(layerNames(), [`shoal-layer-${c1}`])
    assert.deepEqual(
      m.volumes().map((v) => v.references),
      [0]
    )
    assert.deepEqual(await readdir(mountDir), [])
  })

  it('removes the volume when a command fails midway', async () => {
    const l1 = await layer([file('one')])
    lvm.failNext = 'lvrename'
    await assert.rejects(m.materialize([l1]), /injected/)
    assert.deepEqual([...lvm.lvs.keys()], [POOL])
    await m.materialize([l1])
    assert.equal(layerNames().length, 1)
  })

  it('refuses a blob the store does not hold complete, before any command', async () => {
    const from = lvm.commands.length
    await assert.rejects(m.materialize([digestOf(new Uint8Array([1]))]), BlobUnknownError)
    assert.deepEqual(lvm.since(from), [])
    await assert.rejects(m.materialize([]), { code: 'BAD_REQUEST' })
    await assert.rejects(m.materialize(['sha256:12']), { code: 'INVALID_DIGEST' })
  })

  it('makes XFS volumes, mounted without the UUID check that snapshots would fail', async () => {
    const xfs = make({ fstype: 'xfs' })
    await xfs.start()
    const l1 = await layer([file('one')])
    const l2 = await layer([{ header: { name: 'ln', type: 'symlink', linkname: 'one' } }])
    const from = lvm.commands.length
    const r = await xfs.materialize([l1, l2])
    const [c1, c2] = chainsOf([l1, l2]) as [string, string]
    const cmds = lvm.since(from)
    assert.ok(cmds.includes(`mkfs.xfs -q -K /dev/${VG}/shoal-tmp-${c1}`))
    assert.ok(
      cmds.includes(`mount -t xfs -o nouuid /dev/${VG}/shoal-tmp-${c2} ${join(mountDir, `shoal-tmp-${c2}`)}`)
    )
    assert.deepEqual(r.mount, {
      type: 'block',
      device: `/dev/${VG}/shoal-layer-${c2}`,
      fstype: 'xfs',
      options: ['nouuid']
    })
    const top = lvm.tree(`shoal-layer-${c2}`)
    assert.deepEqual((await readdir(top)).sort(), ['ln', 'one'])
    assert.equal(await readlink(join(top, 'ln')), 'one')
    assert.equal(await readFile(join(top, 'one'), 'utf8'), 'x')
    assert.ok((await lstat(join(top, 'ln'))).isSymbolicLink())
    assert.equal((await stat(join(top, 'one'))).mode & 0o777, 0o644)
    await xfs.stop()
  })
})
