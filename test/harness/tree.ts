/** Helpers shared by the materialize integration tests: a merged tree as umoci sees it. */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { lstat, readdir, readlink } from 'node:fs/promises'
import { join } from 'node:path'
import { nativeArchitecture, type TestImage } from '../../harness/images.ts'

/** What is compared of one path: everything but directory mtimes (see below) and inodes. */
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

/**
 * Every path under `root` with its type, mode, owner, size, content hash, symlink target,
 * device number and (not for directories) mtime. Directory mtimes are left out on purpose:
 * in a merged overlay a directory shows the metadata of the topmost layer that has it, and a
 * layer that only adds to a directory without listing it gets a fresh implicit one; an
 * applier like `umoci unpack` keeps the lower layer's directory instead.
 */
export async function tree(root: string): Promise<Map<string, Node>> {
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
export function umociRef(image: TestImage): string {
  return `${image.layout}:${image.platforms ? nativeArchitecture() : image.tag}`
}
