import assert from 'node:assert/strict'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { before, describe, it } from 'node:test'
import { type PlotRun, type RenderedPlot, renderRunPlots, writePlots } from '../../../src/sim/plots.ts'
import { jainIndex } from '../../../src/sim/report.ts'

const MiB = 1024 * 1024

/** An element of a parsed SVG. */
interface El {
  name: string
  attrs: Record<string, string>
  children: El[]
  text: string
}

/** Parses `xml` strictly enough to reject what a browser would: unbalanced tags, stray `<` or `&`. */
function parseXml(xml: string): El {
  const doc: El = { name: '#document', attrs: {}, children: [], text: '' }
  const stack = [doc]
  const token =
    /<!--[\s\S]*?-->|<\?[\s\S]*?\?>|<(\/?)([A-Za-z_][\w:.-]*)((?:\s+[\w:.-]+\s*=\s*(?:"[^"<]*"|'[^'<]*'))*)\s*(\/?)>|([^<]+)|(<)/g
  for (const m of xml.matchAll(token)) {
    const [, close, name, attrText, selfClose, text, stray] = m
    const top = stack.at(-1)!
    if (stray) throw new Error(`stray < at ${m.index}`)
    if (text !== undefined) {
      if (/&(?!(amp|lt|gt|quot|apos|#\d+|#x[0-9a-f]+);)/i.test(text)) throw new Error(`bare & at ${m.index}`)
      if (top === doc && text.trim()) throw new Error('text outside the root element')
      top.text += text
      continue
    }
    if (!name) continue
    if (close) {
      if (top.name !== name) throw new Error(`</${name}> closes <${top.name}> at ${m.index}`)
      stack.pop()
      continue
    }
    const attrs: Record<string, string> = {}
    for (const a of (attrText ?? '').matchAll(/([\w:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) {
      if (a[1]! in attrs) throw new Error(`attribute ${a[1]} twice on <${name}>`)
      attrs[a[1]!] = a[2] ?? a[3] ?? ''
    }
    const el: El = { name, attrs, children: [], text: '' }
    top.children.push(el)
    if (!selfClose) stack.push(el)
  }
  if (stack.length !== 1) throw new Error(`<${stack.at(-1)!.name}> never closed`)
  if (doc.children.length !== 1) throw new Error('not one root element')
  return doc.children[0]!
}

function all(el: El, match: (e: El) => boolean, out: El[] = []): El[] {
  if (match(el)) out.push(el)
  for (const c of el.children) all(c, match, out)
  return out
}

/** The `<g>` groups whose class list holds every class in `classes`. */
const groups = (svg: El, classes: string) =>
  all(
    svg,
    (e) => e.name === 'g' && classes.split(' ').every((c) => (e.attrs['class'] ?? '').split(' ').includes(c))
  )

/** The marks (paths) drawn by groups of `classes`: one per bar, line or box. */
const marks = (svg: El, classes: string) => groups(svg, classes).flatMap((g) => g.children)

/** The lines of every text element inside groups of `classes` (a line of several is a tspan). */
const texts = (svg: El, classes: string) =>
  groups(svg, classes).flatMap((g) =>
    all(g, (e) => e.name === 'text').flatMap((t) =>
      t.children.length ? t.children.map((c) => c.text) : [t.text]
    )
  )

const get = (plots: RenderedPlot[], name: string): El => {
  const plot = plots.find((p) => p.name === name)
  assert.ok(plot, `no ${name} plot among ${plots.map((p) => p.name).join(', ')}`)
  return parseXml(plot.svg)
}

/** A run of `n` nodes with every kind of data; `k` makes runs differ. */
function fullRun(label: string, n: number, k = 1): PlotRun {
  return {
    label,
    completion: Array.from({ length: n }, (_, i) => (10 + i) * k),
    uploaded: Array.from({ length: n }, (_, i) => ((i * 7) % n) * MiB * k),
    tMin: 8,
    imageBytes: 16 * MiB,
    timeline: {
      t: [0, 5, 10, 15, 20],
      completed: [0, 0, 1, 3, n],
      registryBytes: [0, 4, 10, 16, 18].map((x) => x * MiB * k),
      minReplicas: [0, 0, 1, 2, n]
    },
    messages: {
      dht: Array.from({ length: n }, (_, i) => 5 + i),
      control: Array.from({ length: n }, (_, i) => 100 * k + 10 * i)
    }
  }
}

describe('renderRunPlots', () => {
  let one: RenderedPlot[]
  let two: RenderedPlot[]
  before(async () => {
    one = await renderRunPlots([fullRun('model', 5)], { title: 'tiny' })
    two = await renderRunPlots([fullRun('model', 5), fullRun('protocol', 7, 0.8)])
  })

  it('draws all six plots when the runs carry every kind of data, each a well-formed SVG', () => {
    assert.deepEqual(
      one.map((p) => p.name),
      ['completion-cdf', 'completed', 'registry-egress', 'upload', 'piece-diversity', 'messages']
    )
    for (const p of [...one, ...two]) {
      const svg = parseXml(p.svg)
      assert.equal(svg.name, 'svg', p.name)
      assert.equal(svg.attrs['xmlns'], 'http://www.w3.org/2000/svg')
      const width = Number(svg.attrs['width'])
      assert.ok(width >= 500 && width <= 1000, `${p.name} is ${width} px wide`)
    }
  })

  it('titles each plot with the context, N, T_min and F, and names both axes with units', () => {
    const cdf = get(one, 'completion-cdf')
    assert.deepEqual(texts(cdf, 'role-title-text'), ['tiny: completion time CDF, normalised by T_min'])
    assert.deepEqual(texts(cdf, 'role-title-subtitle'), ['N=5, T_min=8.0 s, F=16 MiB'])
    assert.deepEqual(texts(cdf, 'role-axis-title').sort(), ['completion time / T_min', 'share of nodes done'])
    assert.deepEqual(texts(get(one, 'completed'), 'role-axis-title').sort(), ['nodes done', 'time (s)'])
    assert.deepEqual(texts(get(one, 'registry-egress'), 'role-axis-title').sort(), [
      'registry bytes sent / F',
      'time (s)'
    ])
    assert.deepEqual(texts(get(one, 'upload'), 'role-axis-title').sort(), [
      'nodes, most uploaded first',
      'uploaded (MiB)'
    ])
    assert.match(texts(get(one, 'registry-egress'), 'role-title-subtitle')[0]!, /1\.13 x F at the end/)
  })

  it('draws the CDF as one line per series with a legend only when there are several', () => {
    const single = get(one, 'completion-cdf')
    assert.equal(marks(single, 'mark-line role-mark').length, 1)
    assert.equal(groups(single, 'role-legend').length, 0)
    const pair = get(two, 'completion-cdf')
    assert.equal(marks(pair, 'mark-line role-mark').length, 2)
    assert.deepEqual(texts(pair, 'role-legend-label'), ['model', 'protocol'])
    assert.deepEqual(texts(pair, 'role-title-subtitle'), [
      'model: N=5, T_min=8.0 s, F=16 MiB',
      'protocol: N=7, T_min=8.0 s, F=16 MiB'
    ])
  })

  it('marks T_min and the first bar on the CDF', () => {
    const cdf = get(one, 'completion-cdf')
    assert.equal(marks(cdf, 'mark-rule role-mark').length, 2)
    assert.deepEqual(texts(cdf, 'mark-text role-mark'), ['T_min', 'p99 first bar (2.0)'])
  })

  it('keeps the CDF below 100 % while a node has not finished', async () => {
    const top = async (completion: number[]) => {
      const [plot] = await renderRunPlots([{ label: 'x', completion, tMin: 1, imageBytes: MiB }], {
        only: ['completion-cdf']
      })
      const [line] = marks(parseXml(plot!.svg), 'mark-line role-mark')
      const ys = [...line!.attrs['d']!.matchAll(/[ML][\d.e-]+,([\d.e-]+)/g)].map((m) => Number(m[1]))
      return { top: Math.min(...ys), bottom: Math.max(...ys) }
    }
    const done = await top([1, 2, 3, 4])
    assert.equal(done.top, 0)
    const unfinished = await top([1, 2, 3, Number.POSITIVE_INFINITY])
    assert.ok(Math.abs(unfinished.top - unfinished.bottom / 4) < 1e-6, JSON.stringify(unfinished))
  })

  it('draws one upload bar per node, most first, with max/mean and Jain in the title', () => {
    const upload = get(one, 'upload')
    const bars = marks(upload, 'mark-rect role-mark')
    assert.equal(bars.length, 5)
    const values = bars.map((b) => Number(/uploaded \(MiB\): ([\d.]+)/.exec(b.attrs['aria-label']!)![1]))
    assert.deepEqual(values, [4, 3, 2, 1, 0])
    const jain = jainIndex(fullRun('model', 5).uploaded!).toFixed(3)
    assert.deepEqual(texts(upload, 'role-title-subtitle'), [
      `N=5, T_min=8.0 s, F=16 MiB; upload mean 2.0 MiB, max/mean 2.00, Jain's index ${jain}`
    ])
    assert.equal(marks(get(two, 'upload'), 'mark-rect role-mark').length, 5 + 7)
  })

  it('turns the upload bars into a histogram for a large swarm', async () => {
    const n = 500
    const [plot] = await renderRunPlots(
      [
        {
          label: 'x',
          completion: [1],
          uploaded: Array.from({ length: n }, (_, i) => i * MiB),
          tMin: 1,
          imageBytes: MiB
        }
      ],
      { only: ['upload'] }
    )
    const svg = parseXml(plot!.svg)
    const bars = marks(svg, 'mark-rect role-mark')
    assert.ok(bars.length > 5 && bars.length <= 50, `${bars.length} bins`)
    assert.deepEqual(texts(svg, 'role-axis-title').sort(), ['nodes', 'uploaded (MiB)'])
  })

  it('draws one box per message kind and series, and a tick per node', () => {
    const described = (svg: El, what: string) =>
      all(svg, (e) => e.attrs['aria-roledescription'] === what && e.name === 'path').length
    const single = get(one, 'messages')
    assert.equal(described(single, 'box'), 2)
    assert.equal(described(single, 'tick'), 2 * 5)
    assert.match(texts(single, 'role-title-subtitle')[0]!, /mean per node: 7\.0 DHT, 120\.0 control/)
    assert.deepEqual(texts(single, 'column_header').sort(), ['DHT', 'control'])
    const pair = get(two, 'messages')
    assert.equal(described(pair, 'box'), 4)
    assert.equal(described(pair, 'tick'), 2 * (5 + 7))
    assert.deepEqual(texts(pair, 'role-legend-label'), ['model', 'protocol'])
  })

  it('draws the rarest piece and the egress as one line per series', () => {
    assert.equal(marks(get(two, 'piece-diversity'), 'mark-line role-mark').length, 2)
    assert.equal(marks(get(two, 'registry-egress'), 'mark-line role-mark').length, 2)
  })

  it('leaves out the plots whose data no run carries', async () => {
    const bare: PlotRun = { label: 'bare', completion: [3, 4, 5], tMin: 2, imageBytes: MiB }
    assert.deepEqual(
      (await renderRunPlots([bare])).map((p) => p.name),
      ['completion-cdf', 'completed']
    )
    const { messages: _, ...noMessages } = fullRun('m', 3)
    assert.deepEqual(
      (await renderRunPlots([noMessages], { only: ['registry-egress', 'piece-diversity', 'messages'] })).map(
        (p) => p.name
      ),
      ['registry-egress', 'piece-diversity']
    )
    // A plot shows only the runs that carry its data.
    const mixed = await renderRunPlots([bare, fullRun('full', 3)], { only: ['piece-diversity'] })
    assert.equal(marks(get(mixed, 'piece-diversity'), 'mark-line role-mark').length, 1)
    assert.deepEqual(await renderRunPlots([]), [])
  })

  it('refuses runs that share a label', async () => {
    await assert.rejects(renderRunPlots([fullRun('a', 2), fullRun('a', 3)]), RangeError)
  })
})

describe('writePlots', () => {
  it('writes <prefix>-<plot>.svg for every plot the data allows', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-plots-'))
    try {
      const run: PlotRun = { label: 'r', completion: [3, 4], uploaded: [MiB, 0], tMin: 2, imageBytes: MiB }
      const paths = await writePlots(join(dir, 'out'), 'crowd', [run])
      const names = ['crowd-completion-cdf.svg', 'crowd-completed.svg', 'crowd-upload.svg']
      assert.deepEqual(
        paths,
        names.map((n) => join(dir, 'out', n))
      )
      assert.deepEqual((await readdir(join(dir, 'out'))).sort(), [...names].sort())
      assert.equal(parseXml(await readFile(paths[0]!, 'utf8')).name, 'svg')
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
