import type { AbortOptions } from '../interface/common.ts'
import type { CommandRunner } from './command-runner.ts'

/** The xattr overlayfs reads to make a lower directory hide the layers below it. */
export const OVERLAY_OPAQUE_XATTR = 'trusted.overlay.opaque'

/** Kinds of special file a layer may hold. */
export type SpecialFileKind = 'character-device' | 'block-device' | 'fifo'

/**
 * Node has no binding for mknod(2) or setxattr(2), and Shoal ships no native addon. These
 * helpers run the standard tools instead: `mknod` (coreutils, on every Linux) and `setfattr`
 * (package `attr`). Both are called with absolute paths only, through a runner that never
 * uses a shell, and only for the rare entries that need them (whiteouts, opaque directories,
 * device nodes, fifos, PAX xattrs), so their cost does not matter for ordinary layers.
 */
export async function makeSpecialFile(
  runner: CommandRunner,
  path: string,
  kind: SpecialFileKind,
  device: { major: number; minor: number },
  options: AbortOptions = {}
): Promise<void> {
  const args =
    kind === 'fifo'
      ? [path, 'p']
      : [path, kind === 'character-device' ? 'c' : 'b', String(device.major), String(device.minor)]
  await runner.run('mknod', args, options)
}

/** An overlayfs whiteout: the character device 0:0 that hides `path` in the layers below. */
export async function makeWhiteout(runner: CommandRunner, path: string, options: AbortOptions = {}) {
  await makeSpecialFile(runner, path, 'character-device', { major: 0, minor: 0 }, options)
}

/**
 * Sets one extended attribute on `path` itself (a symlink is not followed). The value goes as
 * hex, so any bytes pass through unchanged.
 */
export async function setXattr(
  runner: CommandRunner,
  path: string,
  name: string,
  value: Uint8Array,
  options: AbortOptions = {}
): Promise<void> {
  const v = value.byteLength > 0 ? ['-v', `0x${Buffer.from(value).toString('hex')}`] : []
  await runner.run('setfattr', ['-h', '-n', name, ...v, path], options)
}
