/**
 * The goals of DESIGN.md section 9 measured on one model run: registry egress as a multiple of
 * F, completion percentiles as multiples of T_min, and upload balance.
 */
import type { SwarmResult } from './swarm-model.ts'

/** A run's figures against the goals. */
export interface SwarmReport {
  tMin: number
  registryEgressOverF: number
  completionOverTMin: { p50: number; p99: number; p999: number; max: number }
  /** Largest upload over the mean upload (1 is perfectly even). */
  uploadMaxOverMean: number
  /** Jain's fairness index of the uploads (1 is perfectly even, 1/N is one node doing it all). */
  uploadJain: number
}

/** The nearest-rank percentile of `xs` (q in 0..1). */
export function percentile(xs: readonly number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b)
  if (s.length === 0) return Number.NaN
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!
}

/** Jain's index (Σx)² / (n·Σx²); 1 for an empty or all-zero set. */
export function jainIndex(xs: readonly number[]): number {
  const sum = xs.reduce((a, b) => a + b, 0)
  const sq = xs.reduce((a, b) => a + b * b, 0)
  return sq === 0 ? 1 : (sum * sum) / (xs.length * sq)
}

/** Measures a run against the goals; `imageBytes` is F. */
export function reportSwarm(result: SwarmResult, imageBytes: number): SwarmReport {
  const c = result.completion.map((t) => t / result.tMin)
  const mean = result.uploaded.reduce((a, b) => a + b, 0) / Math.max(1, result.uploaded.length)
  return {
    tMin: result.tMin,
    registryEgressOverF: result.registryEgress / imageBytes,
    completionOverTMin: {
      p50: percentile(c, 0.5),
      p99: percentile(c, 0.99),
      p999: percentile(c, 0.999),
      max: Math.max(...c)
    },
    uploadMaxOverMean: mean === 0 ? 1 : Math.max(...result.uploaded) / mean,
    uploadJain: jainIndex(result.uploaded)
  }
}

/** The report as a Markdown table beside the first bar and target of section 9. */
export function goalTable(r: SwarmReport): string {
  const x = (v: number) => `${v.toFixed(2)} x`
  const c = r.completionOverTMin
  return [
    '| measure | this run | first bar | target |',
    '|---|---|---|---|',
    `| registry egress / F | ${x(r.registryEgressOverF)} | <= 1.2 x | <= 1.02 x |`,
    `| completion p50 / T_min | ${x(c.p50)} | 1.3 x | 1.1 x |`,
    `| completion p99 / T_min | ${x(c.p99)} | 2.0 x | 1.5 x |`,
    `| completion p99.9 / T_min | ${x(c.p999)} | — | — |`,
    `| completion max / T_min | ${x(c.max)} | — | — |`,
    `| upload max / mean | ${x(r.uploadMaxOverMean)} | — | — |`,
    `| upload Jain's index | ${r.uploadJain.toFixed(3)} | — | — |`,
    '',
    `T_min = ${r.tMin.toFixed(1)} s`
  ].join('\n')
}
