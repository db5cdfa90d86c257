/**
 * Renders a vega-lite spec to an SVG string without a browser or a canvas: vega-lite compiles
 * the spec to vega, and a headless vega view (renderer 'none') writes the SVG.
 */
import * as vega from 'vega'
import { compile, type TopLevelSpec } from 'vega-lite'

/**
 * Without a canvas vega cannot measure text and guesses 0.8 em per character, which leaves
 * every chart with a wide empty margin on the right of its title. A sans-serif character is
 * nearer 0.6 em (0.65 bold); vega reads `textMetrics.width` for exactly this kind of override
 * (vl-convert sets it too). Not in vega's typings, hence the cast.
 */
const { textMetrics } = vega as unknown as {
  textMetrics: {
    width: (
      item: { fontSize?: number; fontWeight?: string | number; text?: unknown },
      text?: string
    ) => number
  }
}
textMetrics.width = (item, text) => {
  const size = item.fontSize ?? 11
  const bold = item.fontWeight === 'bold' || Number(item.fontWeight) >= 600
  return Math.ceil((bold ? 0.65 : 0.6) * size * String(text ?? '').trim().length)
}

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

/** The SVG of `spec`; the spec's own `config` wins over the shared look, key by key. */
export async function renderVegaLite(spec: TopLevelSpec): Promise<string> {
  const config: Record<string, unknown> = { ...CONFIG }
  for (const [key, value] of Object.entries(spec.config ?? {})) {
    const shared = config[key]
    const isObject = (v: unknown) => typeof v === 'object' && v !== null && !Array.isArray(v)
    config[key] =
      isObject(shared) && isObject(value) ? { ...(shared as object), ...(value as object) } : value
  }
  const view = new vega.View(vega.parse(compile({ ...spec, config } as TopLevelSpec).spec), {
    renderer: 'none'
  })
  try {
    return await view.toSVG()
  } finally {
    view.finalize()
  }
}
