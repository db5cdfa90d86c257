/**
 * The fuzz targets by name, loaded on demand: `run-target.ts` starts coverage before it loads
 * one (see BlockCoverage).
 */
import type { FuzzTarget } from './engine.ts'

const text = () => import('./text-targets.ts')
const binary = () => import('./binary-targets.ts')

/** Every parser the suite fuzzes, in the order it runs them. */
export const TARGETS: Readonly<Record<string, () => Promise<FuzzTarget>>> = {
  reference: async () => (await text()).referenceTarget,
  manifest: async () => (await text()).manifestTarget,
  'piece-list': async () => (await binary()).pieceListTarget,
  wire: async () => (await binary()).wireTarget,
  tar: async () => (await binary()).tarTarget,
  hyperlayer: async () => (await binary()).hyperlayerTarget,
  config: async () => (await text()).configTarget,
  'http-range': async () => (await text()).rangeTarget,
  'swarm-key': async () => (await text()).swarmKeyTarget
}

/** Targets that test the fuzzer itself. */
export const SELF_TESTS: Readonly<Record<string, () => Promise<FuzzTarget>>> = {
  planted: async () => (await import('./planted.ts')).plantedTarget
}
