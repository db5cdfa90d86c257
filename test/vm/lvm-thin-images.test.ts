/**
 * The project's test images (test/harness/images.ts) materialized by LvmThinMaterializer on
 * real LVM thin volumes, each top volume mounted read-only and compared with what
 * `umoci unpack` makes of the same image: the reference test/integration/materialize/
 * overlay.test.ts holds the overlay to. Runs only inside the User-Mode Linux guest that
 * `npm run test:vm` boots (see lvm-thin.test.ts).
 *
 * The images are built on the host before the guest boots (`npm run test:vm` runs
 * test/harness/build-test-images.ts first): the guest reads the host's cache through its
 * read-only root. Without that cache the guest builds them itself, into its memory, ten times
 * slower.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readdir, readFile, rm } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { pino } from 'pino'
import type { Materialization } from '../../src/interface/materializer.ts'
import { LvmThinMaterializer } from '../../src/materialize/lvm-thin.ts'
import type { LevelBlobStore } from '../../src/store/level-blob-store.ts'
import { buildTestImages, type TestImages } from '../harness/images.ts'
import { assertSameTree, putImageLayers, tree, umociTree } from '../harness/tree.ts'
import { assertInsideGuest, blockDevice, mounted, startGuestStore, wipeVolumeGroup } from './guest.ts'

const run = promisify(execFile)
const logger = pino({ level: process.env.SHOAL_VM_LOG ?? 'silent' })
/** The second scratch disk: lvm-thin.test.ts, which does not wipe its own, has the first. */
const DISK = '/dev/ubdb'
const VG = 'shoal-images'
const BASE = '/tmp/shoal-vm-images'
/** multi:v1 writes 100 MiB through five snapshots, at UML's disk speed. */
const SLOW = { timeout: 120_000 }
const IMAGES = ['tiny', 'multi:v1', 'multi:v2', 'random', 'whiteout', 'multiarch']
/**
 * Directories whose mtime legitimately differs from umoci's, by image. The overlay test leaves
 * every directory mtime out (a merged overlay shows fresh implicit directories); here the
 * layers are applied in place on ext4, so directory mtimes match umoci's except where a layer
 * deleted from a directory it does not list: `whiteout`'s second layer holds only
 * `data/.wh.gone.txt`, so on ext4 `data` keeps the time of that deletion (no entry of the
 * layer sets it back), while umoci puts the directory's time back after applying a whiteout.
 */
const DELETED_FROM: Record<string, string[]> = { whiteout: ['data'] }

describe('the test images on LVM thin volumes, as umoci unpacks them (UML guest)', SLOW, () => {
  let images: TestImages
  let store: LevelBlobStore
  let m: LvmThinMaterializer
  /** What each image got, for the volumes images share. */
  const materialized = new Map<string, Materialization>()

  before(async () => {
    assertInsideGuest([DISK])
    images = await buildTestImages()
    store = await startGuestStore(BASE, logger)
    m = new LvmThinMaterializer(
      { store, logger },
      { vg: VG, pool: 'pool', device: DISK, volumeSize: '1G', mountDir: join(BASE, 'building') }
    )
    await m.start()
  })

  after(async () => {
    for (const [name, mz] of materialized) {
      await m?.release(mz.layers.map((l) => l.digest)).catch(() => {})
      materialized.delete(name)
    }
    await m?.prune().catch(() => {})
    await m?.stop()
    await store?.stop()
    await wipeVolumeGroup(VG, DISK)
    await rm(BASE, { recursive: true, force: true })
  })

  for (const name of IMAGES) {
    it(`materializes ${name} as a read-only volume holding the tree umoci unpacks`, SLOW, async (t) => {
      const image = images.images[name]
      assert.ok(image, `no test image ${name}`)
      const digests = await putImageLayers(store, image)
      const started = performance.now()
      const mz = await m.materialize(digests)
      t.diagnostic(`${digests.length} layers materialized in ${Math.round(performance.now() - started)} ms`)
      materialized.set(name, mz)
      assert.deepEqual(mz.mount, { type: 'block', device: mz.layers.at(-1)?.path, fstype: 'ext4' })
      assert.equal(
        (await run('blockdev', ['--getro', blockDevice(mz)])).stdout.trim(),
        '1',
        'a read-only device'
      )

      const bundle = join(BASE, 'bundle')
      try {
        const expected = await umociTree(image, bundle, { directoryMtimes: true })
        await mounted(BASE, blockDevice(mz), 'ro', async (root) => {
          // Type, mode, owner, size, content, symlink target, device number and mtime of every
          // path, directories included, but for the mtimes of DELETED_FROM.
          const actual = await tree(root, { directoryMtimes: true })
          for (const path of DELETED_FROM[name] ?? []) {
            for (const view of [actual, expected]) {
              const node = view.get(path)
              assert.equal(node?.type, 'dir', `${path} is a directory of ${name}`)
              delete node.mtime
            }
          }
          assertSameTree(actual, expected)
          assert.ok(
            ![...actual.keys()].some((p) => basename(p).startsWith('.wh.')),
            'no whiteout left as a file'
          )
          if (name === 'whiteout') {
            assert.ok(!actual.has('data/gone.txt'), 'the whiteout deleted the file')
            assert.equal(await readFile(join(root, 'data/keep.txt'), 'utf8'), 'keep\n')
            assert.deepEqual(await readdir(join(root, 'data/olddir')), ['z'], 'the opaque dir lost x and y')
            // Emptied in place, not marked: an overlay stacked on this volume must not see it opaque.
            const { stdout } = await run('getfattr', [
              '--absolute-names',
              '-d',
              '-m',
              '-',
              join(root, 'data/olddir')
            ])
            assert.equal(stdout, '', 'no extended attribute on the opaque dir')
          }
        })
      } finally {
        await rm(bundle, { recursive: true, force: true })
      }

      if (name === 'whiteout') {
        // Deleted in the snapshots above only: the bottom layer's volume still holds them.
        await mounted(BASE, mz.layers[0]?.path as string, 'ro', async (root) => {
          assert.equal(await readFile(join(root, 'data/gone.txt'), 'utf8'), 'deleted by the upper layer\n')
          assert.deepEqual((await readdir(join(root, 'data/olddir'))).sort(), ['x', 'y'])
        })
      }
      if (name === 'multi:v2') {
        const v1 = materialized.get('multi:v1')
        assert.ok(v1, 'multi:v1 ran first')
        assert.deepEqual(
          mz.layers.slice(0, 4).map((l) => l.path),
          v1.layers.slice(0, 4).map((l) => l.path),
          'v2 shares the volumes of the four layers it has in common with v1'
        )
        assert.notEqual(blockDevice(mz), blockDevice(v1))
      }
    })
  }
})
