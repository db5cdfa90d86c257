import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { pino } from 'pino'
import { systemClock } from '../../../src/clock.ts'
import { putVerifiedBlob } from '../../../src/fetch/put-blob.ts'
import { LocalCacheMaterializer } from '../../../src/materialize/local-cache.ts'
import { LevelBlobStore } from '../../../src/store/level-blob-store.ts'
import { buildTestImages, type TestImages } from '../../harness/images.ts'
import { tree, umociRef } from './tree.ts'

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
      for (const layer of image.layers) {
        const bytes = await readFile(join(image.layout, 'blobs', 'sha256', layer.digest.slice(7)))
        await putVerifiedBlob(store, layer.digest, bytes, {
          source: 'oci-layout',
          mediaType: layer.mediaType
        })
      }
      const digests = image.layers.map((l) => l.digest)
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
          await run('umoci', ['unpack', '--image', umociRef(image), bundle], { maxBuffer: 1 << 24 })
          const expected = await tree(join(bundle, 'rootfs'))
          const actual = await tree(merged)
          assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort(), 'the same paths')
          for (const [path, node] of expected) assert.deepEqual(actual.get(path), node, path)
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
