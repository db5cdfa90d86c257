import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream, readFileSync, statSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { Logger } from 'pino'
import { systemClock } from '../../src/clock.ts'
import type { Materialization } from '../../src/interface/materializer.ts'
import { LevelBlobStore } from '../../src/store/level-blob-store.ts'

const run = promisify(execFile)

/**
 * Refuses to go on anywhere but inside the UML guest that `npm run test:vm` boots: these tests
 * make volume groups on whole disks, which must be the guest's UML block devices.
 */
export function assertInsideGuest(devices: readonly string[]): void {
  if (process.env.SHOAL_LVM_GUEST !== '1') {
    throw new Error(
      'test/vm creates LVM volume groups on a whole disk: it runs only inside the UML guest ' +
        '(`npm run test:vm`), which sets SHOAL_LVM_GUEST=1; it is not set here'
    )
  }
  for (const device of devices) {
    if (!/^\/dev\/ubd[a-z]$/.test(device) || !statSync(device, { throwIfNoEntry: false })?.isBlockDevice()) {
      throw new Error(`${device} is not one of the UML guest's scratch disks: refusing to touch it`)
    }
  }
  if (!readFileSync('/proc/cpuinfo', 'utf8').includes('User Mode Linux')) {
    throw new Error('this kernel is not User-Mode Linux: refusing to run LVM tests')
  }
}

/** sha256 of a whole device (or file). */
export async function sha256Of(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 }))
    hash.update(chunk as Buffer)
  return hash.digest('hex')
}

/** Removes a volume group and wipes its disk, so the next test file finds the disk blank. */
export async function wipeVolumeGroup(vg: string, device: string): Promise<void> {
  await run('vgremove', ['-ff', '-y', vg]).catch(() => {})
  await run('pvremove', ['-ff', '-y', device]).catch(() => {})
  await run('wipefs', ['-a', device]).catch(() => {})
}

/**
 * A started LevelBlobStore under `base`/store, `base` emptied first. The guest's root is an
 * overlay on the host's: emptying `base` removes nothing of the host's.
 */
export async function startGuestStore(base: string, logger: Logger): Promise<LevelBlobStore> {
  await rm(base, { recursive: true, force: true })
  await mkdir(base, { recursive: true })
  const store = new LevelBlobStore(
    { clock: systemClock, logger },
    { root: join(base, 'store'), quotaBytes: 1024 ** 3 }
  )
  await store.start()
  return store
}

/** The device a block materialization mounts; fails the test for any other kind of mount. */
export function blockDevice(mz: Materialization): string {
  return mz.mount.type === 'block' ? mz.mount.device : assert.fail('not a block mount')
}

/** Mounts `device` with `options` on a fresh directory under `base`, runs `body`, unmounts. */
export async function mounted<T>(
  base: string,
  device: string,
  options: string,
  body: (root: string) => Promise<T>
): Promise<T> {
  const at = await mkdtemp(join(base, 'view-'))
  await run('mount', ['-o', options, device, at])
  try {
    return await body(at)
  } finally {
    await run('umount', [at])
    await rm(at, { recursive: true })
  }
}
