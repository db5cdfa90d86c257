import { UnsafeLayerError } from '../errors.ts'

/** Longest entry name accepted (Linux PATH_MAX). */
const MAX_NAME_BYTES = 4096
/** Longest path component accepted (Linux NAME_MAX). */
const MAX_COMPONENT_BYTES = 255

/**
 * The components of a tar entry name, relative to the layer root (empty for the root itself).
 * `.` components and empty ones (`a//b`, a trailing `/`) are dropped. Throws `UnsafeLayerError`
 * for a name that could leave the root or that no file system can hold: an absolute path, a
 * `..` component, a NUL byte, or a name or component longer than Linux allows.
 *
 * Absolute names are refused rather than made relative (the one exception is `/` alone, the
 * root, which umoci writes): OCI layers have none, and a tool that writes them is one whose
 * other entries should not be trusted either.
 */
export function entryComponents(name: string, what = 'entry'): string[] {
  const shown = JSON.stringify(name.length > 200 ? `${name.slice(0, 197)}...` : name)
  if (name.includes('\0')) throw new UnsafeLayerError(`${what} ${shown} has a NUL byte in its name`)
  if (Buffer.byteLength(name) > MAX_NAME_BYTES) throw new UnsafeLayerError(`${what} ${shown} is too long`)
  const parts = name.split('/').filter((c) => c !== '' && c !== '.')
  // umoci names the root entry `/`: that one absolute name is unambiguous, every other is refused.
  if (name.startsWith('/') && parts.length > 0) {
    throw new UnsafeLayerError(`${what} ${shown} is an absolute path`)
  }
  for (const c of parts) {
    if (c === '..') throw new UnsafeLayerError(`${what} ${shown} has a '..' component`)
    if (Buffer.byteLength(c) > MAX_COMPONENT_BYTES) {
      throw new UnsafeLayerError(`${what} ${shown} has a component longer than ${MAX_COMPONENT_BYTES} bytes`)
    }
  }
  return parts
}
