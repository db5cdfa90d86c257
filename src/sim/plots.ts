/**
 * The simulator's plots as SVG (DESIGN.md section 8): completion-time CDF normalised by T_min,
 * completed nodes over time, registry egress over time, upload per node, piece diversity, and
 * DHT and control messages per node. Drawn with vega-lite, rendered headlessly.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { PLOT_SPECS } from './plot-specs.ts'
import type { MessageCounts, SwarmTimeline } from './timeline.ts'
import { renderVegaLite } from './vega-svg.ts'

/**
 * One run to plot: a model run, a protocol-level run, or one scenario among several. Runs
 * plotted together are series of one chart, so their labels must differ.
 */
export interface PlotRun {
  /** The series' name in legends and subtitles. */
  label: string
  /** Each node's completion time, seconds from the start; not finite for a node that never finished. */
  completion: number[]
  /** Bytes each node uploaded to its peers; without it, no upload plot. */
  uploaded?: number[]
  /** The lower bound T_min, seconds. */
  tMin: number
  /** F, the image's size in bytes. */
  imageBytes: number
  /** Samples over time; without it, no registry egress or piece diversity plot. */
  timeline?: SwarmTimeline
  /** Messages per node; without it, no messages plot. */
  messages?: MessageCounts
}

/** The plots, each written as `<prefix>-<name>.svg`. */
export type PlotName =
  | 'completion-cdf'
  | 'completed'
  | 'registry-egress'
  | 'upload'
  | 'piece-diversity'
  | 'messages'

/** Options for {@link renderRunPlots}. */
export interface PlotOptions {
  /** Put before every title, e.g. the scenario's name. */
  title?: string
  /** Render only these plots (all that the data allows by default). */
  only?: readonly PlotName[]
}

/** One rendered plot. */
export interface RenderedPlot {
  name: PlotName
  svg: string
}

/** Every plot the runs' data allows, as SVG, in a fixed order; several runs overlay as series. */
export async function renderRunPlots(
  runs: readonly PlotRun[],
  options: PlotOptions = {}
): Promise<RenderedPlot[]> {
  if (runs.length === 0) return []
  if (new Set(runs.map((r) => r.label)).size !== runs.length) {
    throw new RangeError(`plotted runs need distinct labels: ${runs.map((r) => r.label).join(', ')}`)
  }
  const plots: RenderedPlot[] = []
  for (const [name, build] of Object.entries(PLOT_SPECS) as [PlotName, (typeof PLOT_SPECS)[PlotName]][]) {
    if (options.only && !options.only.includes(name)) continue
    const spec = build(runs, options.title)
    if (spec) plots.push({ name, svg: await renderVegaLite(spec) })
  }
  return plots
}

/** Renders the runs' plots and writes each to `<outDir>/<prefix>-<name>.svg`; returns the paths. */
export async function writePlots(
  outDir: string,
  prefix: string,
  runs: readonly PlotRun[],
  options: PlotOptions = {}
): Promise<string[]> {
  const plots = await renderRunPlots(runs, options)
  await mkdir(outDir, { recursive: true })
  const paths: string[] = []
  for (const p of plots) {
    const path = join(outDir, `${prefix}-${p.name}.svg`)
    await writeFile(path, p.svg)
    paths.push(path)
  }
  return paths
}
