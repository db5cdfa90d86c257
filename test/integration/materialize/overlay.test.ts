import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { pino } from 'pino'
import { systemClock } from '../../../src/clock.ts'
import { LocalCacheMaterializer } from '../../../src/materialize/local-cache.ts'
import { LevelBlobStore } from '../../../src/store/level-blob-store.ts'
import { buildTestImages, type TestImages } from '../../harness/images.ts'
import { assertSameTree, putImageLayers, tree, umociTree } from '../../harness/tree.ts'

const run = promisify(execFile)
const logger = pino({ level: 'silent' })
const IS_ROOT = process.getuid?.() === 0

describe('LocalCacheMaterializer under a real overlayfs', { skip: IS_ROOT ? false : 'needs root' }, () => {
  let images: TestImages
  let base: string
  let store: LevelBlobStore
  let cache: LocalCacheMaterializer

  before(async () => {
    images = await buildTestImages()
    base = await mkdtemp(join(tmpdir(), 'shoal-overlay-'))
    store = new LevelBlobStore(
      { clock: systemClock, logger },
      { root: join(base, 'store'), quotaBytes: 2 * 1024 * 1024 * 1024 }
    )
    await store.start()
    cache = new LocalCacheMaterializer({ store, logger }, { dir: join(base, 'cache') })
    await cache.start()
  })
  after(async () => {
    await cache?.stop()
    await store?.stop()
    if (base) await rm(base, { recursive: true, force: true })
  })

  for (const name of ['tiny', 'multi:v1', 'multi:v2', 'random', 'whiteout', 'multiarch']) {
    it(`merges ${name} as umoci unpacks it`, async () => {
      const image = images.images[name]
      assert.ok(image, `no test image ${name}`)
      // The layers go through the real store, as the agent would have them.
      const digests = await putImageLayers(store, image)
      const { mount } = await cache.materialize(digests)
      assert.equal(mount.type, 'overlay')
      const lowerdirs = mount.type === 'overlay' ? mount.lowerdirs : []
      const work = await mkdtemp(join(base, 'mount-'))
      const merged = join(work, 'merged')
      await Promise.all(['merged', 'upper', 'work'].map((d) => mkdir(join(work, d))))
      const bundle = join(work, 'bundle')
      try {
        // An upper layer, as a container has (overlayfs wants one when there is a single lower).
        const opts = `lowerdir=${lowerdirs.join(':')},upperdir=${join(work, 'upper')},workdir=${join(work, 'work')}`
        await run('mount', ['-t', 'overlay', 'overlay', '-o', opts, merged])
        try {
          const expected = await umociTree(image, bundle)
          const actual = await tree(merged)
          assertSameTree(actual, expected)
          if (name === 'whiteout') {
            assert.ok(!actual.has('data/gone.txt'), 'the whiteout hides the file')
            assert.ok(actual.has('data/keep.txt'))
            assert.deepEqual(
              await readdir(join(merged, 'data/olddir')),
              ['z'],
              'the opaque dir hides x and y'
            )
          }
        } finally {
          await run('umount', [merged])
        }
      } finally {
        await cache.release(digests)
        await rm(work, { recursive: true, force: true })
      }
    })
  }
})
