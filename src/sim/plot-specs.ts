/**
 * The vega-lite specs of the simulator's plots (DESIGN.md section 8), one builder per plot.
 * Each builder returns undefined when no run carries the data its plot needs. Several runs
 * share one chart as series told apart by colour, named in a legend.
 */
import type { TopLevelSpec } from 'vega-lite'
import type { PlotName, PlotRun } from './plots.ts'
import { jainIndex } from './report.ts'

type Spec = TopLevelSpec
type Row = Record<string, number | string>

/** Plot area in pixels; titles, axes and the legend add about 100 x 80 around it. */
const WIDTH = 560
const HEIGHT = 280
/** More nodes than this and the upload plot turns from one bar per node into a histogram. */
const MAX_UPLOAD_BARS = 200
const MARKER = '#c33'
/** Axes that count things tick on whole numbers. */
const COUNT_AXIS = { tickMinStep: 1, format: 'd' }
const MiB = 1024 * 1024

const num = (v: number, digits: number) => (Number.isFinite(v) ? v.toFixed(digits) : String(v))
const mib = (bytes: number) => `${num(bytes / MiB, bytes >= 10 * MiB ? 0 : 1)} MiB`

/** The series colour: the legend shows only when there is more than one series. */
function series(runs: readonly PlotRun[]) {
  return {
    field: 'series',
    type: 'nominal' as const,
    title: null,
    scale: { domain: runs.map((r) => r.label) },
    legend: runs.length > 1 ? { orient: 'bottom' as const, direction: 'horizontal' as const } : null
  }
}

/** One line per run: its N, T_min and `extra`; no label when there is a single run. */
function subtitle(runs: readonly PlotRun[], extra: (r: PlotRun) => string = () => ''): string[] {
  return runs.map((r) => {
    const line = `N=${r.completion.length}, T_min=${num(r.tMin, 1)} s, F=${mib(r.imageBytes)}${extra(r)}`
    return runs.length > 1 ? `${r.label}: ${line}` : line
  })
}

function title(context: string | undefined, text: string, sub: string[]) {
  return { text: context ? `${context}: ${text}` : text, subtitle: sub }
}

/** Dashed vertical (`x`) or horizontal (`y`) markers with their labels, as two layers. */
function markers(channel: 'x' | 'y', marks: readonly { value: number; label: string }[]) {
  const values = marks.map((m, i) => ({ value: m.value, label: m.label, offset: 4 + 14 * i }))
  const at = { field: 'value', type: 'quantitative' as const }
  const text =
    channel === 'x'
      ? { x: at, y: { field: 'offset', type: 'quantitative' as const, scale: null } }
      : { y: at, x: { value: WIDTH - 4 } }
  return [
    {
      data: { values },
      mark: { type: 'rule' as const, color: MARKER, strokeDash: [4, 3] },
      encoding: { [channel]: at }
    },
    {
      data: { values },
      mark: {
        type: 'text' as const,
        color: MARKER,
        align: channel === 'x' ? ('left' as const) : ('right' as const),
        baseline: channel === 'x' ? ('top' as const) : ('bottom' as const),
        dx: channel === 'x' ? 4 : 0,
        dy: channel === 'x' ? 0 : -2
      },
      encoding: { ...text, text: { field: 'label' } }
    }
  ]
}

const finite = (xs: readonly number[]) => xs.filter(Number.isFinite).sort((a, b) => a - b)

/** Share of nodes done against completion / T_min; unfinished nodes keep a curve below 1. */
function completionCdf(runs: readonly PlotRun[], context?: string): Spec {
  const values: Row[] = runs.flatMap((r) => [
    { series: r.label, x: 0, y: 0, k: 0 },
    ...finite(r.completion).map((t, k) => ({
      series: r.label,
      x: t / r.tMin,
      y: (k + 1) / r.completion.length,
      k: k + 1
    }))
  ])
  return {
    title: title(context, 'completion time CDF, normalised by T_min', subtitle(runs)),
    width: WIDTH,
    height: HEIGHT,
    layer: [
      {
        data: { values },
        mark: { type: 'line', interpolate: 'step-after', strokeWidth: 2 },
        encoding: {
          x: { field: 'x', type: 'quantitative', title: 'completion time / T_min', scale: { zero: true } },
          y: {
            field: 'y',
            type: 'quantitative',
            title: 'share of nodes done',
            scale: { domain: [0, 1] },
            axis: { format: '%' }
          },
          color: series(runs),
          order: { field: 'k' }
        }
      },
      ...markers('x', [
        { value: 1, label: 'T_min' },
        { value: 2, label: 'p99 first bar (2.0)' }
      ])
    ]
  }
}

/** Nodes holding the whole image against time, in seconds, from each node's completion time. */
function completed(runs: readonly PlotRun[], context?: string): Spec {
  const values: Row[] = runs.flatMap((r) => [
    { series: r.label, t: 0, done: 0 },
    ...finite(r.completion).map((t, k) => ({ series: r.label, t, done: k + 1 }))
  ])
  const tMins = [...new Set(runs.map((r) => r.tMin))]
  const marks = tMins.map((t) => ({
    value: t,
    label: tMins.length > 1 ? `T_min ${num(t, 1)} s` : 'T_min'
  }))
  return {
    title: title(context, 'nodes holding the whole image over time', subtitle(runs)),
    width: WIDTH,
    height: HEIGHT,
    layer: [
      {
        data: { values },
        mark: { type: 'line', interpolate: 'step-after', strokeWidth: 2 },
        encoding: {
          x: { field: 't', type: 'quantitative', title: 'time (s)' },
          y: { field: 'done', type: 'quantitative', title: 'nodes done', axis: COUNT_AXIS },
          color: series(runs),
          order: { field: 'done' }
        }
      },
      ...markers('x', marks)
    ]
  }
}

/** Cumulative registry bytes over the image size, from the runs' timelines. */
function registryEgress(runs: readonly PlotRun[], context?: string): Spec | undefined {
  const withTimeline = runs.filter((r) => r.timeline && r.timeline.t.length > 0)
  if (withTimeline.length === 0) return undefined
  const values: Row[] = withTimeline.flatMap((r) =>
    r.timeline!.t.map((t, i) => ({ series: r.label, t, f: r.timeline!.registryBytes[i]! / r.imageBytes }))
  )
  const last = (r: PlotRun) => r.timeline!.registryBytes.at(-1)! / r.imageBytes
  return {
    title: title(
      context,
      'registry egress as a multiple of F over time',
      subtitle(withTimeline, (r) => `, ${num(last(r), 2)} x F at the end`)
    ),
    width: WIDTH,
    height: HEIGHT,
    layer: [
      {
        data: { values },
        mark: { type: 'line', strokeWidth: 2 },
        encoding: {
          x: { field: 't', type: 'quantitative', title: 'time (s)' },
          y: { field: 'f', type: 'quantitative', title: 'registry bytes sent / F' },
          color: series(withTimeline)
        }
      },
      ...markers('y', [
        { value: 1, label: '1 x F' },
        { value: 1.2, label: 'first bar (1.2 x F)' }
      ])
    ]
  }
}

/** Bytes each node uploaded, sorted: one bar per node, or a histogram for large swarms. */
function upload(runs: readonly PlotRun[], context?: string): Spec | undefined {
  const withUpload = runs.filter((r) => r.uploaded && r.uploaded.length > 0)
  if (withUpload.length === 0) return undefined
  const balance = (r: PlotRun) => {
    const up = r.uploaded!
    const mean = up.reduce((a, b) => a + b, 0) / up.length
    const maxOverMean = mean === 0 ? 1 : Math.max(...up) / mean
    return `; upload mean ${mib(mean)}, max/mean ${num(maxOverMean, 2)}, Jain's index ${num(jainIndex(up), 3)}`
  }
  const values: Row[] = withUpload.flatMap((r) =>
    [...r.uploaded!]
      .sort((a, b) => b - a)
      .map((bytes, i) => ({ series: r.label, rank: i + 1, mib: bytes / MiB }))
  )
  const head = {
    title: title(context, 'upload per node', subtitle(withUpload, balance)),
    width: WIDTH,
    height: HEIGHT,
    data: { values }
  }
  if (Math.max(...withUpload.map((r) => r.uploaded!.length)) > MAX_UPLOAD_BARS) {
    return {
      ...head,
      mark: { type: 'bar', opacity: withUpload.length > 1 ? 0.6 : 1 },
      encoding: {
        x: { field: 'mib', type: 'quantitative', bin: { maxbins: 40 }, title: 'uploaded (MiB)' },
        y: { aggregate: 'count', type: 'quantitative', title: 'nodes', stack: null, axis: COUNT_AXIS },
        color: series(withUpload)
      }
    }
  }
  return {
    ...head,
    mark: { type: 'bar' },
    encoding: {
      x: {
        field: 'rank',
        type: 'ordinal',
        title: 'nodes, most uploaded first',
        axis: { labels: Math.max(...withUpload.map((r) => r.uploaded!.length)) <= 40, labelAngle: 0 }
      },
      xOffset: { field: 'series', type: 'nominal', scale: { domain: withUpload.map((r) => r.label) } },
      y: { field: 'mib', type: 'quantitative', title: 'uploaded (MiB)' },
      color: series(withUpload)
    }
  }
}

/** The replica count of the rarest piece over time, from the runs' timelines. */
function pieceDiversity(runs: readonly PlotRun[], context?: string): Spec | undefined {
  const withTimeline = runs.filter((r) => r.timeline && r.timeline.t.length > 0)
  if (withTimeline.length === 0) return undefined
  const values: Row[] = withTimeline.flatMap((r) =>
    r.timeline!.t.map((t, i) => ({ series: r.label, t, replicas: r.timeline!.minReplicas[i]! }))
  )
  return {
    title: title(context, 'piece diversity: replicas of the rarest piece over time', subtitle(withTimeline)),
    width: WIDTH,
    height: HEIGHT,
    data: { values },
    mark: { type: 'line', interpolate: 'step-after', strokeWidth: 2 },
    encoding: {
      x: { field: 't', type: 'quantitative', title: 'time (s)' },
      y: {
        field: 'replicas',
        type: 'quantitative',
        title: 'nodes holding the rarest piece',
        axis: COUNT_AXIS
      },
      color: series(withTimeline)
    }
  }
}

/** Messages each node sent, a box plot and a tick per node for each kind (DHT, control), each kind on its own scale. */
function messages(runs: readonly PlotRun[], context?: string): Spec | undefined {
  const withMessages = runs.filter((r) => r.messages && r.messages.dht.length + r.messages.control.length > 0)
  if (withMessages.length === 0) return undefined
  const kinds = [
    ['DHT', (r: PlotRun) => r.messages!.dht],
    ['control', (r: PlotRun) => r.messages!.control]
  ] as const
  const values: Row[] = withMessages.flatMap((r) =>
    kinds.flatMap(([kind, of]) => of(r).map((count) => ({ series: r.label, kind, count })))
  )
  const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length)
  const means = (r: PlotRun) =>
    `; mean per node: ${num(mean(r.messages!.dht), 1)} DHT, ${num(mean(r.messages!.control), 1)} control`
  return {
    title: title(context, 'DHT and control messages sent per node', subtitle(withMessages, means)),
    data: { values },
    facet: {
      column: { field: 'kind', type: 'nominal', title: null, sort: kinds.map(([k]) => k) }
    },
    spec: {
      width: WIDTH / 2 - 20,
      height: HEIGHT,
      encoding: {
        x: {
          field: 'series',
          type: 'nominal',
          title: null,
          sort: withMessages.map((r) => r.label),
          axis: { labelAngle: 0 }
        },
        y: {
          field: 'count',
          type: 'quantitative',
          title: 'messages per node',
          scale: { zero: false },
          axis: COUNT_AXIS
        },
        color: series(withMessages)
      },
      // The ticks, one per node, keep a kind visible when every node sent the same number
      // (the box is then flat).
      layer: [
        { mark: { type: 'boxplot', extent: 'min-max', size: 36, opacity: 0.7 } },
        { mark: { type: 'tick', thickness: 1, size: 48, color: '#222', opacity: 0.5 } }
      ]
    },
    resolve: { scale: { y: 'independent' } }
  }
}

/** Every plot by name, in the order they are written. */
export const PLOT_SPECS: Record<PlotName, (runs: readonly PlotRun[], context?: string) => Spec | undefined> =
  {
    'completion-cdf': completionCdf,
    completed,
    'registry-egress': registryEgress,
    upload,
    'piece-diversity': pieceDiversity,
    messages
  }
