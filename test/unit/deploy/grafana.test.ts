import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { parser } from '@prometheus-io/lezer-promql'
import { ShoalMetrics } from '../../../src/api/metrics.ts'
import { literalTypeProblems } from './literal-types.ts'

const DASHBOARD = fileURLToPath(new URL('../../../deploy/grafana/shoal-dashboard.json', import.meta.url))
const DASHBOARD_TYPES = '@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen'

interface Target {
  refId: string
  expr: string
  datasource?: { uid: string }
}
interface Panel {
  id: number
  type: string
  title: string
  gridPos: { x: number; y: number; w: number; h: number }
  datasource?: { type: string; uid: string }
  targets?: Target[]
}

/**
 * The series names a PromQL expression reads, after Grafana's variables are replaced as
 * Grafana would; throws when the expression does not parse.
 */
function seriesOf(expr: string): string[] {
  const q = expr.replace(/\$__(rate_interval|interval|range)/g, '5m')
  const names: string[] = []
  const errors: number[] = []
  parser.parse(q).iterate({
    enter: (n) => {
      if (n.type.isError) errors.push(n.from)
      if (n.name === 'Identifier' && n.node.parent?.name === 'VectorSelector')
        names.push(q.slice(n.from, n.to))
    }
  })
  if (errors.length > 0) throw new Error(`PromQL does not parse at ${errors[0]}: ${q}`)
  return names
}

/** Exposed series of a metric: a histogram's `_bucket`, `_sum` and `_count` too. */
async function exposedSeries(): Promise<Set<string>> {
  const out = new Set<string>()
  for (const m of await new ShoalMetrics().registry.getMetricsAsJSON()) {
    out.add(m.name)
    if (String(m.type) === 'histogram') for (const s of ['_bucket', '_sum', '_count']) out.add(m.name + s)
  }
  return out
}

let dashboard: {
  uid: string
  title: string
  panels: Panel[]
  templating: { list: { name: string; type: string; query: unknown }[] }
}

before(async () => {
  dashboard = JSON.parse(await readFile(DASHBOARD, 'utf8'))
})

describe('deploy/grafana/shoal-dashboard.json', () => {
  it("type-checks against Grafana's dashboard schema, and the check catches a bad field", () => {
    const check = (value: unknown) =>
      literalTypeProblems([{ label: 'dashboard', module: DASHBOARD_TYPES, type: 'Dashboard', value }])
    assert.deepEqual(check(dashboard), [])
    const broken = structuredClone(dashboard) as unknown as { panels: Record<string, unknown>[] }
    ;(broken.panels[1] as Record<string, unknown>).gridPoss = { x: 0 }
    assert.match(check(broken).join('\n'), /gridPoss/)
    assert.match(check({ ...dashboard, schemaVersion: '39' }).join('\n'), /schemaVersion|string/)
  })

  it('has what Grafana needs to import it: uid, title, unique panel ids, a layout in 24 columns', () => {
    assert.match(dashboard.uid, /^[a-zA-Z0-9_-]{1,40}$/)
    assert.ok(dashboard.title)
    const ids = dashboard.panels.map((p) => p.id)
    assert.equal(new Set(ids).size, ids.length, 'panel ids repeat')
    for (const p of dashboard.panels) {
      assert.ok(p.title && p.type && p.gridPos, `panel ${p.id}`)
      assert.ok(p.gridPos.x >= 0 && p.gridPos.w > 0 && p.gridPos.x + p.gridPos.w <= 24, `panel ${p.title}`)
    }
    // Every query reads from the data source the dashboard asks for on import.
    const ds = dashboard.templating.list.find((v) => v.type === 'datasource')
    assert.equal(ds?.query, 'prometheus')
    for (const p of dashboard.panels.filter((x) => x.type !== 'row')) {
      assert.equal(p.datasource?.uid, `\${${ds?.name}}`, p.title)
      assert.ok(p.targets && p.targets.length > 0, `${p.title} has no query`)
      const refs = p.targets.map((t) => t.refId)
      assert.equal(new Set(refs).size, refs.length, `${p.title}: refIds repeat`)
    }
  })

  it('queries only series the agent exports, and parse as PromQL', async () => {
    const exposed = await exposedSeries()
    const used = new Set<string>()
    const variables = dashboard.templating.list.flatMap((v) =>
      typeof v.query === 'object' && v.query !== null ? [(v.query as { query: string }).query] : []
    )
    for (const expr of [
      ...dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)),
      ...variables.map((v) => v.replace(/^label_values\((\w+),.*\)$/, '$1'))
    ]) {
      for (const name of seriesOf(expr)) {
        assert.ok(exposed.has(name), `${name} is not a metric of src/api/metrics.ts`)
        used.add(name)
      }
    }
    // And every metric of the agent's own (not Node's process metrics) is on it.
    for (const m of await new ShoalMetrics().registry.getMetricsAsJSON()) {
      if (/^shoal_(process|nodejs)_/.test(m.name)) continue
      const series = String(m.type) === 'histogram' ? `${m.name}_bucket` : m.name
      assert.ok(used.has(series), `the dashboard does not show ${m.name}`)
    }
    assert.throws(() => seriesOf('sum(rate(shoal_fetched_bytes_total[5m]) by'), /does not parse/)
  })
})
