/**
 * Seeded randomness for the model simulator: mulberry32, a 32-bit generator small enough to
 * read and good enough for picking pieces and peers. The same seed gives the same run.
 */

/** A generator of floats in [0, 1) from `seed` (mulberry32). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
