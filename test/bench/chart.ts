/**
 * The grouped bar chart of the benchmark results in the README, drawn with vega-lite (the
 * simulator's plots, src/sim/plots.ts, draw the completion-time CDFs).
 */
import type { TopLevelSpec } from 'vega-lite'
import { renderVegaLite } from '../../src/sim/vega-svg.ts'

/** One group of bars, e.g. one setting of a benchmark. */
export interface ChartGroup {
  name: string
  bars: { label: string; value: number }[]
}

/** The first bar of each group grey (the baseline), the next ones in colour. */
const COLORS = ['#8c8c8c', '#2b7bb9', '#e3a21a', '#4f9d4f']

/** Horizontal bars, one block of bars per group, each bar labelled with its value and `unit`. */
export function barChartSvg(o: { title: string; unit: string; groups: ChartGroup[] }): Promise<string> {
  const label = (v: number) => `${v < 10 ? v.toFixed(2) : Math.round(v)} ${o.unit}`
  const max = Math.max(1e-9, ...o.groups.flatMap((g) => g.bars.map((b) => b.value)))
  const spec: TopLevelSpec = {
    title: { text: o.title },
    spacing: 14,
    vconcat: o.groups.map((g, k) => ({
      title: { text: g.name, fontSize: 13, fontWeight: 'bold', anchor: 'start', offset: 6 },
      width: 420,
      height: { step: 24 },
      data: {
        values: g.bars.map((b, i) => ({ label: b.label, value: b.value, index: i, text: label(b.value) }))
      },
      encoding: {
        y: { field: 'label', type: 'nominal', title: null, sort: null, axis: { labelLimit: 240 } },
        x: {
          field: 'value',
          type: 'quantitative',
          title: k === o.groups.length - 1 ? o.unit : null,
          scale: { domain: [0, max * 1.15] }
        }
      },
      layer: [
        {
          mark: { type: 'bar', height: { band: 0.75 } },
          encoding: { color: { field: 'index', type: 'nominal', legend: null, scale: { range: COLORS } } }
        },
        { mark: { type: 'text', align: 'left', dx: 4 }, encoding: { text: { field: 'text' } } }
      ]
    }))
  }
  return renderVegaLite(spec)
}
