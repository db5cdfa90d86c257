import bytes from 'bytes'
import ms from 'ms'

/** Parses `20GiB`, `4MiB`, `512kb` or a plain number of bytes. Returns undefined when invalid. */
export function parseSize(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? v : undefined
  if (typeof v !== 'string' || v.trim() === '') return undefined
  // The `bytes` package reads KB/MB as binary units; accept the IEC spellings (KiB, MiB) too.
  const n = bytes.parse(v.trim().replace(/([KMGTP])iB$/i, '$1B'))
  return n !== null && Number.isSafeInteger(n) && n >= 0 ? n : undefined
}

/** Parses `3s`, `250ms`, `2m` or a plain number of milliseconds. Returns undefined when invalid. */
export function parseDuration(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? v : undefined
  if (typeof v !== 'string' || v.trim() === '') return undefined
  const n = ms(v.trim() as ms.StringValue)
  return typeof n === 'number' && Number.isFinite(n) && n >= 0 ? n : undefined
}
