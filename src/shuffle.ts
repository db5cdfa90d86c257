/**
 * A shuffled copy of `items` (Fisher-Yates), so that no peer or source is always tried first.
 * `random` defaults to `Math.random`; the simulator passes its seeded generator.
 */
export function shuffle<T>(items: readonly T[], random: () => number = Math.random): T[] {
  const out = [...items]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[out[i], out[j]] = [out[j] as T, out[i] as T]
  }
  return out
}
