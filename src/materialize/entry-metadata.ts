import { UnsafeLayerError } from '../errors.ts'
import type { TarHeader } from './tar-entries.ts'

/** Largest uid or gid (2^32 - 2: 2^32 - 1 means "no change" to chown). */
const MAX_ID = 0xffff_fffe
/** PAX records naming extended attributes (GNU tar, Go's archive/tar, containerd). */
const PAX_XATTR_PREFIX = 'SCHILY.xattr.'
/**
 * Attributes a layer may not set itself: overlayfs reads them (opaque, redirect, metacopy), and
 * a layer must change the merged view only through whiteouts.
 */
const RESERVED_XATTR_PREFIX = 'trusted.overlay.'
/** The namespaces Linux has extended attributes in. */
const XATTR_NAMESPACES = ['user.', 'trusted.', 'security.', 'system.']
/** Linux's limits: a name (XATTR_NAME_MAX), a value (XATTR_SIZE_MAX), all names (XATTR_LIST_MAX). */
const MAX_XATTR_NAME_BYTES = 255
const MAX_XATTR_VALUE_BYTES = 64 * 1024
const MAX_XATTR_LIST_BYTES = 64 * 1024

/** Ownership, mode, times and extended attributes of one entry. */
export interface Metadata {
  uid: number
  gid: number
  /** Permission bits with setuid, setgid and sticky (`& 0o7777`). */
  mode: number
  /** Seconds since the epoch (fractional from PAX). */
  mtime: number
  atime: number
  xattrs: Array<[string, Uint8Array]>
}

/** The entry's metadata, PAX records taking precedence; malformed numbers are refused. */
export function metadataOf(header: TarHeader): Metadata {
  const pax = header.pax ?? {}
  const uid = pax.uid !== undefined ? Number(pax.uid) : (header.uid ?? 0)
  const gid = pax.gid !== undefined ? Number(pax.gid) : (header.gid ?? 0)
  const mtime = pax.mtime !== undefined ? Number(pax.mtime) : (header.mtime?.getTime() ?? 0) / 1000
  const atime = pax.atime !== undefined ? Number(pax.atime) : mtime
  const mode = header.mode ?? 0o644
  const shown = JSON.stringify(header.name)
  if (!isId(uid) || !isId(gid)) throw new UnsafeLayerError(`entry ${shown} has a malformed uid or gid`)
  if (!Number.isFinite(mtime) || !Number.isFinite(atime)) {
    throw new UnsafeLayerError(`entry ${shown} has a malformed time`)
  }
  if (!Number.isInteger(mode) || mode < 0) throw new UnsafeLayerError(`entry ${shown} has a malformed mode`)
  const xattrs: Array<[string, Uint8Array]> = []
  let listBytes = 0
  for (const [key, value] of Object.entries(pax)) {
    if (!key.startsWith(PAX_XATTR_PREFIX)) continue
    const name = key.slice(PAX_XATTR_PREFIX.length)
    if (name.startsWith(RESERVED_XATTR_PREFIX)) continue
    // What no Linux file system can hold is refused here, not left to fail as a command.
    const bytes = Buffer.from(value, 'utf8')
    const nameBytes = Buffer.byteLength(name)
    listBytes += nameBytes + 1
    if (
      name.includes('\0') ||
      nameBytes > MAX_XATTR_NAME_BYTES ||
      !XATTR_NAMESPACES.some((ns) => name.startsWith(ns) && name.length > ns.length)
    ) {
      throw new UnsafeLayerError(
        `entry ${shown} has a malformed extended attribute name ${JSON.stringify(name.slice(0, 100))}`
      )
    }
    if (bytes.length > MAX_XATTR_VALUE_BYTES || listBytes > MAX_XATTR_LIST_BYTES) {
      throw new UnsafeLayerError(`entry ${shown} has more extended attribute data than Linux holds`)
    }
    xattrs.push([name, bytes])
  }
  return { uid, gid, mode: mode & 0o7777, mtime, atime, xattrs }
}

/** A valid uid, gid or device number. */
export function isId(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0 && n <= MAX_ID
}
