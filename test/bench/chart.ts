/** A dependency-free grouped bar chart as SVG, for benchmark results in the README. */
export interface ChartGroup {
  name: string
  bars: { label: string; value: number }[]
}

const COLORS = ['#8c8c8c', '#2b7bb9', '#e3a21a', '#4f9d4f']

export function barChartSvg(o: { title: string; unit: string; groups: ChartGroup[] }): string {
  const width = 640
  const rowHeight = 26
  const left = 230
  const max = Math.max(1, ...o.groups.flatMap((g) => g.bars.map((b) => b.value)))
  const scale = (width - left - 90) / max
  const rows: string[] = []
  let y = 44
  for (const g of o.groups) {
    rows.push(`<text x="10" y="${y + 16}" font-weight="bold">${xmlEscape(g.name)}</text>`)
    y += rowHeight
    g.bars.forEach((b, i) => {
      const w = Math.max(1, b.value * scale)
      rows.push(
        `<text x="24" y="${y + 16}">${xmlEscape(b.label)}</text>`,
        `<rect x="${left}" y="${y + 3}" width="${w.toFixed(1)}" height="${rowHeight - 8}" fill="${COLORS[i % COLORS.length]}"/>`,
        `<text x="${(left + w + 6).toFixed(1)}" y="${y + 16}">${b.value < 10 ? b.value.toFixed(2) : Math.round(b.value)} ${xmlEscape(o.unit)}</text>`
      )
      y += rowHeight
    })
    y += 8
  }
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y + 10}" font-family="sans-serif" font-size="13">`,
    `<title>${xmlEscape(o.title)}</title>`,
    '<rect width="100%" height="100%" fill="white"/>',
    `<text x="10" y="24" font-size="15">${xmlEscape(o.title)}</text>`,
    ...rows,
    '</svg>',
    ''
  ].join('\n')
}

/** One curve of a CDF chart: the completion times of one run. */
export interface CdfSeries {
  label: string
  values: number[]
}

/**
 * Completion-time CDFs as SVG: for each series, the share of nodes done (y) by each time (x),
 * with vertical markers (a lower bound, say).
 */
export function cdfChartSvg(o: {
  title: string
  unit: string
  series: CdfSeries[]
  markers?: { label: string; value: number }[]
}): string {
  const width = 640
  const height = 360
  const pad = { left: 50, right: 20, top: 40, bottom: 60 }
  const all = [...o.series.flatMap((s) => s.values), ...(o.markers ?? []).map((m) => m.value)]
  const max = Math.max(1e-9, ...all) * 1.05
  const x = (v: number) => pad.left + (v / max) * (width - pad.left - pad.right)
  const y = (f: number) => height - pad.bottom - f * (height - pad.top - pad.bottom)
  const parts: string[] = []
  for (let t = 0; t <= 4; t++) {
    const v = (max * t) / 4
    parts.push(
      `<line x1="${x(v).toFixed(1)}" y1="${y(0)}" x2="${x(v).toFixed(1)}" y2="${y(1)}" stroke="#eee"/>`,
      `<text x="${x(v).toFixed(1)}" y="${y(0) + 16}" text-anchor="middle">${v.toFixed(1)}</text>`
    )
  }
  parts.push(
    `<text x="${(width / 2).toFixed(0)}" y="${height - 28}" text-anchor="middle">${xmlEscape(o.unit)}</text>`,
    `<text x="12" y="${y(1) + 4}">100%</text>`,
    `<text x="12" y="${y(0.5) + 4}">50%</text>`,
    `<line x1="${pad.left}" y1="${y(0)}" x2="${width - pad.right}" y2="${y(0)}" stroke="#444"/>`
  )
  for (const [i, m] of (o.markers ?? []).entries()) {
    parts.push(
      `<line x1="${x(m.value).toFixed(1)}" y1="${y(0)}" x2="${x(m.value).toFixed(1)}" y2="${y(1)}" stroke="#c33" stroke-dasharray="4 3"/>`,
      `<text x="${(x(m.value) + 4).toFixed(1)}" y="${y(1) + 14 + 14 * i}" fill="#c33">${xmlEscape(m.label)}</text>`
    )
  }
  for (const [i, s] of o.series.entries()) {
    const color = COLORS[(i + 1) % COLORS.length]
    const sorted = [...s.values].sort((a, b) => a - b)
    let d = `M${x(0).toFixed(1)},${y(0)}`
    sorted.forEach((v, k) => {
      d += ` H${x(v).toFixed(1)} V${y((k + 1) / sorted.length).toFixed(1)}`
    })
    parts.push(
      `<path d="${d}" fill="none" stroke="${color}" stroke-width="2"/>`,
      `<rect x="${pad.left + 160 * i}" y="${height - 18}" width="12" height="12" fill="${color}"/>`,
      `<text x="${pad.left + 160 * i + 16}" y="${height - 8}">${xmlEscape(s.label)}</text>`
    )
  }
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<title>${xmlEscape(o.title)}</title>`,
    '<rect width="100%" height="100%" fill="white"/>',
    `<text x="10" y="22" font-size="14">${xmlEscape(o.title)}</text>`,
    ...parts,
    '</svg>',
    ''
  ].join('\n')
}

function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}
