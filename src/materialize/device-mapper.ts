import { readFile } from 'node:fs/promises'
import { DeviceMapperMissingError } from '../errors.ts'

/** Where the kernel lists its misc devices: `236 device-mapper` when device-mapper is there. */
export const PROC_MISC = '/proc/misc'

/**
 * True when the kernel has device-mapper. Asked of /proc/misc, never of /dev/mapper/control: any
 * `lvm` command creates that node, even on a kernel without device-mapper.
 */
export async function hasDeviceMapper(procMisc = PROC_MISC): Promise<boolean> {
  const text = await readFile(procMisc, 'utf8').catch(() => '')
  return text.split('\n').some((line) => line.trim().split(/\s+/)[1] === 'device-mapper')
}

/** Throws `DeviceMapperMissingError` unless the kernel has device-mapper. */
export async function assertDeviceMapper(procMisc = PROC_MISC): Promise<void> {
  if (await hasDeviceMapper(procMisc)) return
  throw new DeviceMapperMissingError(
    `materialize.driver is lvm-thin, but this kernel has no device-mapper (no device-mapper in ${procMisc}): ` +
      'load dm-thin-pool (modprobe dm-thin-pool) or use materialize.driver local-cache'
  )
}
