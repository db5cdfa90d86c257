/**
 * How hard the hardening suite pushes. `npm run test:hardening` runs at scale 1, a few minutes on
 * two cores; `npm run bench:hardening` sets `HARDENING_SCALE=10`. Tests multiply their iteration
 * counts by the scale (`scaled`); the fuzzer gives each target `fuzzMs()`, which `FUZZ_SECONDS`
 * sets on its own.
 */

/** The multiplier from `HARDENING_SCALE` (default 1). */
export function hardeningScale(): number {
  const raw = process.env.HARDENING_SCALE
  if (raw === undefined || raw === '') return 1
  const n = Number(raw)
  if (!Number.isFinite(n) || n <= 0) throw new RangeError(`HARDENING_SCALE=${raw} is not a positive number`)
  return n
}

/** `n` times the scale, at least 1. */
export function scaled(n: number): number {
  return Math.max(1, Math.round(n * hardeningScale()))
}

/** How long each fuzz target runs: `FUZZ_SECONDS`, else 3 s times the scale. */
export function fuzzMs(): number {
  const raw = process.env.FUZZ_SECONDS
  if (raw !== undefined && raw !== '') {
    const s = Number(raw)
    if (!Number.isFinite(s) || s <= 0) throw new RangeError(`FUZZ_SECONDS=${raw} is not a positive number`)
    return s * 1000
  }
  return 3000 * hardeningScale()
}
