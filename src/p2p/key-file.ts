/**
 * Create-once secret files (the swarm key, the node's private key). A secret is written to a
 * temporary file with mode 0600, fsync'ed, then hard-linked into place: `link` fails when the
 * target exists, so two processes racing to create the same file both end up with the one that
 * landed first, and a crash never leaves a half-written key where the real one belongs.
 */
import { randomBytes } from 'node:crypto'
import { link, mkdir, open, readFile, unlink } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'

/** Mode of every secret file Shoal writes: owner read/write only. */
export const SECRET_FILE_MODE = 0o600

/**
 * Returns the contents of `path`, creating it first from `create()` when it does not exist.
 * `created` says whether this call wrote the file.
 */
export async function readOrCreateSecretFile(
  path: string,
  create: () => Uint8Array
): Promise<{ bytes: Uint8Array; created: boolean }> {
  const existing = await readIfExists(path)
  if (existing !== undefined) return { bytes: existing, created: false }
  const dir = dirname(path)
  await mkdir(dir, { recursive: true, mode: 0o700 })
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`)
  const bytes = create()
  const fh = await open(tmp, 'wx', SECRET_FILE_MODE)
  try {
    await fh.writeFile(bytes)
    await fh.sync()
  } finally {
    await fh.close()
  }
  try {
    await link(tmp, path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    // Someone else created it between our read and our link: theirs wins.
    return { bytes: await readFile(path), created: false }
  } finally {
    await unlink(tmp).catch(() => {})
  }
  await syncDir(dir)
  return { bytes, created: true }
}

async function readIfExists(path: string): Promise<Uint8Array | undefined> {
  try {
    return await readFile(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

async function syncDir(dir: string): Promise<void> {
  // Makes the new directory entry durable; some file systems refuse fsync on a directory.
  const fh = await open(dir, 'r').catch(() => undefined)
  if (fh === undefined) return
  try {
    await fh.sync().catch(() => {})
  } finally {
    await fh.close()
  }
}
