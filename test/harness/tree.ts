/**
 * Helpers shared by the materialize tests (the overlay's, on the host, and LVM thin's, in the
 * UML guest): a materialized tree compared with what `umoci unpack` makes of the same image.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { lstat, readdir, readFile, readlink } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { putVerifiedBlob } from '../../src/fetch/put-blob.ts'
import type { BlobStore } from '../../src/interface/store.ts'
import { nativeArchitecture, type TestImage } from './images.ts'

const run = promisify(execFile)

/** What is compared of one path: everything but inodes (and directory mtimes, see `tree`). */
export interface Node {
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

/** What `tree` reads beyond its defaults. */
export interface TreeOptions {
  /** Directory mtimes too (default false: see `tree`). */
  directoryMtimes?: boolean
}

/**
 * Every path under `root` with its type, mode, owner, size, content hash, symlink target,
 * device number and (not for directories, unless `directoryMtimes`) mtime. Directory mtimes
 * are left out by default: in a merged overlay a directory shows the metadata of the topmost
 * layer that has it, and a layer that only adds to a directory without listing it gets a
 * fresh implicit one; an applier like `umoci unpack` keeps the lower layer's directory instead.
 */
export async function tree(root: string, options: TreeOptions = {}): Promise<Map<string, Node>> {
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
    if (!st.isDirectory() || options.directoryMtimes) node.mtime = Math.floor(st.mtimeMs / 1000)
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
export function umociRef(image: TestImage): string {
  return `${image.layout}:${image.platforms ? nativeArchitecture() : image.tag}`
}

/**
 * The tree `umoci unpack` makes of `image` under `bundle` (a path that must not exist yet): the
 * reference a materialized tree is compared with.
 */
export async function umociTree(
  image: TestImage,
  bundle: string,
  options: TreeOptions = {}
): Promise<Map<string, Node>> {
  await run('umoci', ['unpack', '--image', umociRef(image), bundle], { maxBuffer: 1 << 24 })
  return tree(join(bundle, 'rootfs'), options)
}

/** Asserts that two trees hold the same paths, and each path the same node. */
export function assertSameTree(actual: Map<string, Node>, expected: Map<string, Node>): void {
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort(), 'the same paths')
  for (const [path, node] of expected) assert.deepEqual(actual.get(path), node, path)
}

/**
 * Puts an image's layer blobs from its layout into `store` through the real verified path, as
 * the agent would have them; returns their digests, bottom first.
 */
export async function putImageLayers(store: BlobStore, image: TestImage): Promise<string[]> {
  for (const layer of image.layers) {
    const bytes = await readFile(join(image.layout, 'blobs', 'sha256', layer.digest.slice('sha256:'.length)))
    await putVerifiedBlob(store, layer.digest, bytes, { source: 'oci-layout', mediaType: layer.mediaType })
  }
  return image.layers.map((l) => l.digest)
}
