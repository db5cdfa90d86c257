import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream, readFileSync, statSync } from 'node:fs'
import { promisify } from 'node:util'

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
