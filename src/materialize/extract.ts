import { randomBytes } from 'node:crypto'
import type { Stats } from 'node:fs'
import {
  chmod,
  type FileHandle,
  lchown,
  link,
  lstat,
  lutimes,
  mkdir,
  open,
  readdir,
  rename,
  rm,
  symlink
} from 'node:fs/promises'
import { join } from 'node:path'
import { GiB, MiB } from '../constants.ts'
import { DiskFullError, UnsafeLayerError } from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import { type CommandRunner, execFileRunner } from './command-runner.ts'
import { decompressLayer } from './decompress.ts'
import { isId, type Metadata, metadataOf } from './entry-metadata.ts'
import { entryComponents } from './entry-path.ts'
import { makeSpecialFile, makeWhiteout, OVERLAY_OPAQUE_XATTR, setXattr } from './special-files.ts'
import { readTar, type TarEntry, type TarHeader } from './tar-entries.ts'

/** Largest single entry accepted: far above any real file in an image, far below a lie. */
export const MAX_LAYER_ENTRY_BYTES = 64 * GiB
/** File data is gathered up to this much before each write. */
const WRITE_BATCH = 1 * MiB

const WHITEOUT_PREFIX = '.wh.'
const OPAQUE_MARKER = '.wh..wh..opq'

type EntryType = NonNullable<TarHeader['type']>
const EXTRACTABLE = new Set<EntryType>([
  'file',
  'contiguous-file',
  'directory',
  'symlink',
  'link',
  'character-device',
  'block-device',
  'fifo'
])

export interface ExtractLayerOptions extends AbortOptions {
  /** Runs `mknod` and `setfattr` (default: `execFile`). */
  runner?: CommandRunner
  /** Entries larger than this are refused (default `MAX_LAYER_ENTRY_BYTES`). */
  maxEntryBytes?: number
  /**
   * Flush the file system (`sync -f`) before the rename (default false), so that a layer that
   * exists after a power loss also has all its data: a cache trusts what it finds in place.
   */
  durable?: boolean
  /**
   * What OCI whiteouts become (default `'overlay'`). `'overlay'`: overlayfs whiteouts in a new
   * directory, for a layer that overlayfs stacks on the ones below. `'delete'`: the layer is
   * applied in place on the tree of the layers below it (an LVM snapshot of its parent):
   * `.wh.<name>` deletes `<name>`, `.wh..wh..opq` empties its directory, keeping in both cases
   * what this layer itself wrote.
   */
  whiteouts?: WhiteoutMode
}

/** How a layer's whiteouts are applied: see `ExtractLayerOptions.whiteouts`. */
export type WhiteoutMode = 'overlay' | 'delete'

/** What an extraction wrote. */
export interface ExtractLayerResult {
  entries: number
  /** Bytes of file data written. */
  bytes: number
}

/**
 * Extracts one OCI layer (gzip, zstd or plain tar, told by its magic bytes) into `dir`, which
 * must not exist yet, keeping owners, modes, times, symlinks, hard links, device nodes, fifos
 * and PAX xattrs, and turning OCI whiteouts into overlayfs ones: `.wh.<name>` becomes the
 * character device 0:0 `<name>`, `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its
 * directory. Needs root (owners, device nodes, trusted xattrs).
 *
 * Any entry that could write outside the root, or that is malformed, stops the extraction with
 * `UnsafeLayerError`: see `entryComponents` for names; no entry is ever written through a
 * symlink (one in an entry's parent chain is refused, and the last component is replaced, not
 * followed); a hard link must name a non-directory extracted earlier from this layer.
 *
 * Everything is written to `<dir>.tmp-<random>` (mode 0700, so nothing else sees it half done)
 * and renamed to `dir` only on success; on any failure the temporary tree is removed and `dir`
 * is left as it was. If `dir` appeared meanwhile (a concurrent extraction won), the rename's
 * `ENOTEMPTY` error is thrown as is, the temporary tree removed.
 *
 * With `whiteouts: 'delete'` the layer is applied instead on the existing directory `dir`,
 * holding the tree of the layers below, with the same checks; nothing is written through a
 * symlink of that tree either (a lower symlink or file where this layer has a directory is
 * replaced by the directory, as an overlay would show it). There is no temporary tree: a
 * failure leaves `dir` half changed, for the caller to throw away (a snapshot volume).
 */
export async function extractLayer(
  source: AsyncIterable<Uint8Array>,
  dir: string,
  options: ExtractLayerOptions = {}
): Promise<ExtractLayerResult> {
  if (options.whiteouts === 'delete') {
    if (!(await lstatIfAny(dir))?.isDirectory()) throw new Error(`no directory ${dir} to apply a layer on`)
    return writeLayer(source, dir, options).catch((err) => {
      throw diskFull(err, dir)
    })
  }
  const tmp = `${dir}.tmp-${randomBytes(6).toString('hex')}`
  await mkdir(tmp, { mode: 0o700 })
  try {
    const result = await writeLayer(source, tmp, options)
    await rename(tmp, dir)
    return result
  } catch (err) {
    await rm(tmp, { recursive: true, force: true })
    throw diskFull(err, dir)
  }
}

/** Writes the layer's entries under `root`, then flushes them if asked to. */
async function writeLayer(
  source: AsyncIterable<Uint8Array>,
  root: string,
  options: ExtractLayerOptions
): Promise<ExtractLayerResult> {
  const writer = new LayerWriter(root, options)
  for await (const entry of readTar(decompressLayer(source))) {
    options.signal?.throwIfAborted()
    await writer.add(entry)
  }
  const result = await writer.finish()
  if (options.durable) await (options.runner ?? execFileRunner).run('sync', ['-f', root], options)
  return result
}

/** `ENOSPC` as `DiskFullError`; anything else as it is. */
function diskFull(err: unknown, dir: string): unknown {
  if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') return err
  return new DiskFullError(`no space left extracting a layer into ${dir}`, { cause: err })
}

/** Writes the entries of one layer under a private root, checking each before it is written. */
class LayerWriter {
  readonly #root: string
  readonly #runner: CommandRunner
  readonly #maxEntryBytes: number
  readonly #signal: AbortSignal | undefined
  /** Applying in place on the layers below (`whiteouts: 'delete'`) rather than into a new tree. */
  readonly #inPlace: boolean
  /**
   * Paths this layer wrote (or listed, for a directory that was there): in place, a whiteout
   * deletes only what the layers below left, never these.
   */
  readonly #mine = new Set<string>()
  /** Relative paths checked to be real directories (not symlinks): each is checked once. */
  readonly #dirs = new Set<string>()
  /** Non-directories written so far: the only valid hard-link targets. */
  readonly #files = new Set<string>()
  /** Directory metadata, applied last: creating children would change the mtimes. */
  readonly #dirMeta = new Map<string, Metadata>()
  #entries = 0
  #bytes = 0

  constructor(root: string, options: ExtractLayerOptions) {
    this.#root = root
    this.#runner = options.runner ?? execFileRunner
    this.#maxEntryBytes = options.maxEntryBytes ?? MAX_LAYER_ENTRY_BYTES
    this.#signal = options.signal
    this.#inPlace = options.whiteouts === 'delete'
  }

  /** Checks and writes one entry, reading its data. */
  async add({ header, body }: TarEntry): Promise<void> {
    const name = header.name
    const parts = entryComponents(name)
    const size = header.size ?? 0
    if (!Number.isSafeInteger(size) || size < 0 || size > this.#maxEntryBytes) {
      throw new UnsafeLayerError(`entry ${JSON.stringify(name)} has an absurd size (${size})`)
    }
    const type = header.type
    if (!type || !EXTRACTABLE.has(type)) {
      throw new UnsafeLayerError(`entry ${JSON.stringify(name)} has an unsupported type (${type})`)
    }
    const meta = metadataOf(header)
    const base = parts.at(-1)
    if (base === undefined) {
      if (type !== 'directory') throw new UnsafeLayerError(`the layer root is a ${type}, not a directory`)
      this.#dirMeta.set('', meta)
    } else if (base.startsWith(WHITEOUT_PREFIX)) {
      if (this.#inPlace) await this.#deleteLower(parts, name)
      else await this.#whiteout(parts, name, meta)
    } else {
      await this.#create(parts, header, meta, body)
    }
    this.#entries++
    await drain(body)
  }

  /** Applies the directories' metadata, then returns what was written. */
  async finish(): Promise<ExtractLayerResult> {
    if (!this.#dirMeta.has('') && !this.#inPlace) await chmod(this.#root, 0o755)
    for (const [rel, meta] of [...this.#dirMeta].reverse()) await this.#apply(join(this.#root, rel), meta)
    return { entries: this.#entries, bytes: this.#bytes }
  }

  async #create(parts: string[], header: TarHeader, meta: Metadata, body: AsyncIterable<Uint8Array>) {
    const name = header.name
    const rel = parts.join('/')
    const path = join(await this.#parent(parts, name, meta), parts.at(-1) as string)
    const existing = await lstatIfAny(path)
    if (existing) {
      // A directory listed twice keeps its contents; anything else is replaced, never followed.
      if (existing.isDirectory() && header.type === 'directory') {
        this.#dirMeta.set(rel, meta)
        this.#mine.add(rel)
        return
      }
      await this.#remove(rel, path, existing.isDirectory())
    }
    this.#mine.add(rel)
    switch (header.type) {
      case 'directory':
        await mkdir(path, { mode: 0o700 })
        this.#dirs.add(rel)
        this.#dirMeta.set(rel, meta)
        return
      case 'link':
        await this.#hardLink(path, name, header.linkname ?? '')
        break
      case 'symlink':
        if (!header.linkname || header.linkname.includes('\0')) {
          throw new UnsafeLayerError(`symlink ${JSON.stringify(name)} has no valid target`)
        }
        await symlink(header.linkname, path)
        await this.#apply(path, meta, true)
        break
      case 'character-device':
      case 'block-device':
      case 'fifo': {
        const device = { major: header.devmajor ?? 0, minor: header.devminor ?? 0 }
        if (!isId(device.major) || !isId(device.minor)) {
          throw new UnsafeLayerError(`device ${JSON.stringify(name)} has a malformed device number`)
        }
        await makeSpecialFile(this.#runner, path, header.type, device, { signal: this.#signal })
        await this.#apply(path, meta)
        break
      }
      default:
        this.#bytes += await writeFile(path, body)
        await this.#apply(path, meta)
    }
    this.#files.add(rel)
  }

  /** A hard link to a non-directory this layer wrote before, through real directories only. */
  async #hardLink(path: string, name: string, linkname: string) {
    const target = entryComponents(linkname, `hard-link target of ${JSON.stringify(name)}`)
    if (!this.#files.has(target.join('/'))) {
      throw new UnsafeLayerError(
        `hard link ${JSON.stringify(name)} points to ${JSON.stringify(linkname)}, not a file extracted before it`
      )
    }
    const dir = await this.#parent(target, name)
    await link(join(dir, target.at(-1) as string), path)
  }

  /** `.wh..wh..opq` marks its directory opaque; `.wh.<name>` becomes the whiteout `<name>`. */
  async #whiteout(parts: string[], name: string, meta: Metadata) {
    const base = parts.at(-1) as string
    const dir = await this.#parent(parts, name, meta)
    const options = { signal: this.#signal }
    if (base === OPAQUE_MARKER) {
      await setXattr(this.#runner, dir, OVERLAY_OPAQUE_XATTR, Buffer.from('y'), options)
      return
    }
    // Other `.wh..wh.` names are AUFS bookkeeping (`.wh..wh.plnk`), meaningless to overlayfs.
    if (base.startsWith(`${WHITEOUT_PREFIX}${WHITEOUT_PREFIX}`)) return
    const hidden = base.slice(WHITEOUT_PREFIX.length)
    if (hidden === '' || hidden === '.' || hidden === '..') {
      throw new UnsafeLayerError(`whiteout ${JSON.stringify(name)} names no file`)
    }
    const path = join(dir, hidden)
    // A whiteout hides the layers below only: what this layer wrote at that name stays (and
    // already hides them).
    if (await lstatIfAny(path)) return
    await makeWhiteout(this.#runner, path, options)
  }

  /**
   * The absolute path of an entry's parent directory, after checking that every component of
   * the chain is a real directory, not a symlink. Missing ones are created as 0755 root:root
   * (what containerd and umoci do) when `implicit` gives the entry's metadata for their mtime;
   * without it a missing component is refused.
   */
  async #parent(parts: string[], name: string, implicit?: Metadata): Promise<string> {
    let rel = ''
    for (const c of parts.slice(0, -1)) {
      rel = rel === '' ? c : `${rel}/${c}`
      if (this.#dirs.has(rel)) continue
      const abs = join(this.#root, rel)
      let st = await lstatIfAny(abs)
      if (st && !st.isDirectory() && this.#inPlace && implicit && !this.#mine.has(rel)) {
        // A lower layer's symlink or file where this layer has a directory: the directory
        // replaces it, as it would hide it in an overlay; nothing is written through it.
        await this.#remove(rel, abs, false)
        st = undefined
      }
      if (st?.isSymbolicLink()) {
        throw new UnsafeLayerError(
          `entry ${JSON.stringify(name)} would be written through the symlink ${rel}`
        )
      }
      if (st && !st.isDirectory()) {
        throw new UnsafeLayerError(`entry ${JSON.stringify(name)} has the non-directory ${rel} in its path`)
      }
      if (!st) {
        if (!implicit) throw new UnsafeLayerError(`entry ${JSON.stringify(name)}: ${rel} does not exist`)
        await mkdir(abs, { mode: 0o700 })
        this.#dirMeta.set(rel, { ...implicit, uid: 0, gid: 0, mode: 0o755, xattrs: [] })
        this.#mine.add(rel)
      }
      this.#dirs.add(rel)
    }
    return join(this.#root, ...parts.slice(0, -1))
  }

  /**
   * In place: `.wh..wh..opq` empties its directory of what the layers below left there,
   * `.wh.<name>` deletes `<name>`; what this layer wrote stays (the OCI rule: a whiteout hides
   * the layers below only). A whiteout of something the tree does not have does nothing.
   */
  async #deleteLower(parts: string[], name: string) {
    const base = parts.at(-1) as string
    const opaque = base === OPAQUE_MARKER
    // Other `.wh..wh.` names are AUFS bookkeeping (`.wh..wh.plnk`), meaningless here too.
    if (!opaque && base.startsWith(`${WHITEOUT_PREFIX}${WHITEOUT_PREFIX}`)) return
    const hidden = base.slice(WHITEOUT_PREFIX.length)
    if (!opaque && (hidden === '' || hidden === '.' || hidden === '..')) {
      throw new UnsafeLayerError(`whiteout ${JSON.stringify(name)} names no file`)
    }
    if (!(await this.#existingParent(parts, name))) return
    const dirRel = parts.slice(0, -1).join('/')
    if (opaque) {
      await this.#clearLower(dirRel, this.#mineAncestors())
      return
    }
    const rel = dirRel === '' ? hidden : `${dirRel}/${hidden}`
    if (this.#mine.has(rel)) return
    const path = join(this.#root, rel)
    const st = await lstatIfAny(path)
    if (!st) return
    const kept = st.isDirectory() ? this.#mineAncestors() : undefined
    if (kept?.has(rel)) await this.#clearLower(rel, kept)
    else await this.#remove(rel, path, st.isDirectory())
  }

  /**
   * In place, for a whiteout: the entry's parent directory when the tree has it as a chain of
   * real directories, or undefined (a missing directory, a lower symlink or file: nothing
   * there to delete). This layer's own symlink or file in the chain is refused, as anywhere.
   */
  async #existingParent(parts: string[], name: string): Promise<string | undefined> {
    let rel = ''
    for (const c of parts.slice(0, -1)) {
      rel = rel === '' ? c : `${rel}/${c}`
      if (this.#dirs.has(rel)) continue
      const st = await lstatIfAny(join(this.#root, rel))
      if (!st) return undefined
      if (!st.isDirectory()) {
        if (!this.#mine.has(rel)) return undefined
        const what = st.isSymbolicLink() ? 'would be written through the symlink' : 'has the non-directory'
        throw new UnsafeLayerError(`entry ${JSON.stringify(name)} ${what} ${rel}`)
      }
      this.#dirs.add(rel)
    }
    return join(this.#root, ...parts.slice(0, -1))
  }

  /** Removes from directory `rel` what the layers below left, down to what this layer wrote. */
  async #clearLower(rel: string, kept: Set<string>) {
    const dir = join(this.#root, rel)
    for (const child of await readdir(dir)) {
      const childRel = rel === '' ? child : `${rel}/${child}`
      const path = join(dir, child)
      const isDirectory = (await lstat(path)).isDirectory()
      if (!this.#mine.has(childRel) && !kept.has(childRel)) await this.#remove(childRel, path, isDirectory)
      else if (isDirectory) await this.#clearLower(childRel, kept)
    }
  }

  /** The directories above what this layer wrote. */
  #mineAncestors(): Set<string> {
    const out = new Set<string>()
    for (const p of this.#mine) {
      for (let i = p.lastIndexOf('/'); i > 0; i = p.lastIndexOf('/', i - 1)) {
        const a = p.slice(0, i)
        if (out.has(a)) break
        out.add(a)
      }
    }
    return out
  }

  /**
   * Removes what an entry replaces, and forgets it and everything under it (only a directory
   * has anything under it: in place, files of the layers below are replaced by the thousand).
   */
  async #remove(rel: string, path: string, isDirectory = true) {
    await rm(path, { recursive: true, force: true })
    for (const set of [this.#dirs, this.#files, this.#mine]) set.delete(rel)
    this.#dirMeta.delete(rel)
    if (!isDirectory) return
    const under = `${rel}/`
    for (const set of [this.#dirs, this.#files, this.#mine]) {
      for (const p of set) if (p === rel || p.startsWith(under)) set.delete(p)
    }
    for (const p of this.#dirMeta.keys()) if (p === rel || p.startsWith(under)) this.#dirMeta.delete(p)
  }

  /** Owner, then mode (chown clears setuid), xattrs (chown clears capabilities), then times. */
  async #apply(path: string, meta: Metadata, isSymlink = false) {
    await lchown(path, meta.uid, meta.gid)
    if (!isSymlink) await chmod(path, meta.mode)
    for (const [name, value] of meta.xattrs) {
      try {
        await setXattr(this.#runner, path, name, value, { signal: this.#signal })
      } catch (err) {
        this.#signal?.throwIfAborted()
        // The file system refused what the layer asked for (a capability that does not parse, a
        // namespace it does not support, more than it holds): the layer cannot be laid out here.
        throw new UnsafeLayerError(
          `extended attribute ${name} of ${JSON.stringify(path.slice(this.#root.length + 1))} cannot be set: ${(err as Error).message}`,
          { cause: err }
        )
      }
    }
    await lutimes(path, meta.atime, meta.mtime)
  }
}

/** Reads what an entry carries beyond what was used (a symlink's or device's stray data). */
async function drain(body: AsyncIterable<Uint8Array>) {
  for await (const _ of body) {
    // discard
  }
}

async function lstatIfAny(path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

/** Creates `path` (never following anything there) and writes the entry's data; returns its size. */
async function writeFile(path: string, body: AsyncIterable<Uint8Array>): Promise<number> {
  const fh = await open(path, 'wx', 0o600)
  try {
    let pending: Uint8Array[] = []
    let held = 0
    let total = 0
    for await (const chunk of body) {
      pending.push(chunk)
      held += chunk.byteLength
      if (held >= WRITE_BATCH) {
        await writeAll(fh, Buffer.concat(pending))
        total += held
        pending = []
        held = 0
      }
    }
    if (held > 0) await writeAll(fh, Buffer.concat(pending))
    return total + held
  } finally {
    await fh.close()
  }
}

async function writeAll(fh: FileHandle, data: Uint8Array) {
  let done = 0
  while (done < data.byteLength) {
    const { bytesWritten } = await fh.write(data, done, data.byteLength - done)
    done += bytesWritten
  }
}
