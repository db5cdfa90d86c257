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
        `<text x="${(left + w + 6).toFixed(1)}" y="${y + 16}">${Math.round(b.value)} ${xmlEscape(o.unit)}</text>`
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

function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}
