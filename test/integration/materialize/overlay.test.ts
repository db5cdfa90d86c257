import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { pino } from 'pino'
import { systemClock } from '../../../src/clock.ts'
import { putVerifiedBlob } from '../../../src/fetch/put-blob.ts'
import { LocalCacheMaterializer } from '../../../src/materialize/local-cache.ts'
import { LevelBlobStore } from '../../../src/store/level-blob-store.ts'
import { buildTestImages, nativeArchitecture, type TestImage, type TestImages } from '../../harness/images.ts'

const run = promisify(execFile)
const logger = pino({ level: 'silent' })
const IS_ROOT = process.getuid?.() === 0

/** What is compared of one path: everything but directory mtimes (see below) and inodes. */
interface Node {
  type: string
  mode: number
  uid: number
  gid: number
  size?: number
  sha256?: string
  target?: string
  rdev?: number
  mtime?: number
}

/**
 * Every path under `root` with its type, mode, owner, size, content hash, symlink target,
 * device number and (not for directories) mtime. Directory mtimes are left out on purpose:
 * in a merged overlay a directory shows the metadata of the topmost layer that has it, and a
 * layer that only adds to a directory without listing it gets a fresh implicit one; an
 * applier like `umoci unpack` keeps the lower layer's directory instead.
 */
async function tree(root: string): Promise<Map<string, Node>> {
  const out = new Map<string, Node>()
  const walk = async (rel: string) => {
    const path = join(root, rel)
    const st = await lstat(path)
    const node: Node = { type: typeOf(st), mode: st.mode & 0o7777, uid: st.uid, gid: st.gid }
    if (st.isFile()) {
      node.size = st.size
      node.sha256 = await hashFile(path)
    }
    if (st.isSymbolicLink()) node.target = await readlink(path)
    if (st.isCharacterDevice() || st.isBlockDevice()) node.rdev = st.rdev
    if (!st.isDirectory()) node.mtime = Math.floor(st.mtimeMs / 1000)
    if (st.isSymbolicLink()) node.mode = 0 // no meaning on Linux
    out.set(rel === '' ? '/' : rel, node)
    if (st.isDirectory()) for (const name of (await readdir(path)).sort()) await walk(join(rel, name))
  }
  await walk('')
  return out
}

function typeOf(st: Awaited<ReturnType<typeof lstat>>): string {
  if (st.isFile()) return 'file'
  if (st.isDirectory()) return 'dir'
  if (st.isSymbolicLink()) return 'symlink'
  if (st.isCharacterDevice()) return 'char'
  if (st.isBlockDevice()) return 'block'
  if (st.isFIFO()) return 'fifo'
  return 'other'
}

async function hashFile(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

/** The OCI layout reference umoci unpacks: the native platform's tag for the index. */
function umociRef(image: TestImage): string {
  return `${image.layout}:${image.platforms ? nativeArchitecture() : image.tag}`
}

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
      const lowerdirs = await cache.materializeImage(digests)
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
        cache.releaseImage(digests)
        await rm(work, { recursive: true, force: true })
      }
    })
  }
})
