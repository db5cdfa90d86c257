/**
 * A target with a bug behind four nested conditions, each met by 1 byte value in 16: what a
 * coverage-guided search finds within a few thousand inputs and blind mutation almost never
 * (1 in 65536 tries). The suite runs it to show the fuzzer follows coverage.
 */
import type { FuzzTarget } from './engine.ts'

function planted(data: Buffer): void {
  if (data.length < 4) return
  if ((data[0] as number) % 16 === 5) {
    if ((data[1] as number) % 16 === 7) {
      if ((data[2] as number) % 16 === 9) {
        if ((data[3] as number) % 16 === 11) throw new TypeError('planted bug')
      }
    }
  }
}

export const plantedTarget: FuzzTarget = {
  name: 'planted',
  run: planted,
  expected: () => false,
  seeds: [Buffer.alloc(4)],
  maxLength: 8,
  covers: /\/test\/hardening\/fuzz\/planted\.ts$/
}
