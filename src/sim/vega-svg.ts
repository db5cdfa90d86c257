/**
 * Renders a vega-lite spec to an SVG string without a browser or a canvas: vega-lite compiles
 * the spec to vega, and a headless vega view (renderer 'none') writes the SVG. Text widths are
 * estimated rather than measured, which is why every chart here leaves room around its labels.
 */
import { parse, View } from 'vega'
import { compile, type TopLevelSpec } from 'vega-lite'

/** The look every chart shares: one font, a white background, titles on the left. */
const CONFIG: NonNullable<TopLevelSpec['config']> = {
  font: 'sans-serif',
  background: 'white',
  padding: 8,
  title: { anchor: 'start', fontSize: 15, subtitleFontSize: 12, subtitleColor: '#444', offset: 12 },
  axis: { titleFontSize: 12, labelFontSize: 11, titleFontWeight: 'normal' },
  legend: { titleFontSize: 12, labelFontSize: 12, labelLimit: 320 },
  header: { titleFontSize: 12, labelFontSize: 12 }
}

/** The SVG of `spec`; the spec's own `config` wins over the shared look. */
export async function renderVegaLite(spec: TopLevelSpec): Promise<string> {
  const config = { ...CONFIG, ...spec.config }
  const view = new View(parse(compile({ ...spec, config } as TopLevelSpec).spec), { renderer: 'none' })
  try {
    return await view.toSVG()
  } finally {
    view.finalize()
  }
}
