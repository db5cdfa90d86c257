import assert from 'node:assert/strict'
import { readFile, stat } from 'node:fs/promises'
import { describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { ShoalMetrics } from '../../../src/api/metrics.ts'
import { configSchema } from '../../../src/config/schema.ts'

const ROOT = new URL('../../../', import.meta.url)
const guide = await readFile(new URL('docs/operations.md', ROOT), 'utf8')

/** The rows of the markdown table that follows `heading`, as arrays of cells. */
function tableAfter(heading: string): string[][] {
  const start = guide.indexOf(heading)
  assert.ok(start >= 0, `no section ${heading}`)
  const lines = guide.slice(start).split('\n')
  const first = lines.findIndex((l) => l.startsWith('|'))
  const rows: string[][] = []
  for (const line of lines.slice(first)) {
    if (!line.startsWith('|')) break
    if (/^\|[\s|-]+\|$/.test(line)) continue
    rows.push(
      line
        .split('|')
        .slice(1, -1)
        .map((c) => c.trim())
    )
  }
  return rows.slice(1)
}

/** Dotted paths of every key of the config schema, objects included. */
function schemaPaths(shape: Record<string, unknown>, prefix = ''): string[] {
  const out: string[] = []
  for (const [k, v] of Object.entries(shape)) {
    // biome-ignore lint/suspicious/noExplicitAny: walking zod internals of our own schema
    let t: any = v
    while (t?.def?.innerType || t?.def?.in) t = t.def.innerType ?? t.def.in
    out.push(`${prefix}${k}`)
    if (t?.def?.type === 'object') out.push(...schemaPaths(t.def.shape, `${prefix}${k}.`))
  }
  return out
}

// The operator's guide names files, keys and metrics: none may be stale.
describe('docs/operations.md', () => {
  it('explains every metric of the agent', async () => {
    const rows = tableAfter('## Read the metrics').map((r) => r[0] ?? '')
    for (const m of await new ShoalMetrics().registry.getMetricsAsJSON()) {
      if (/^shoal_(process|nodejs)_/.test(m.name)) continue
      assert.ok(
        rows.some((cell) => cell.includes(`\`${m.name}\``) || cell.includes(`\`${m.name}{`)),
        `the metrics table lacks ${m.name}`
      )
    }
  })

  it('names only configuration keys that exist', () => {
    const paths = new Set(schemaPaths(configSchema.shape as Record<string, unknown>))
    const keys = tableAfter('## Configure').flatMap((r) =>
      [...(r[0] ?? '').matchAll(/`([^`]+)`/g)].map((m) => m[1])
    )
    assert.ok(keys.length > 15, keys.join(' '))
    for (const key of keys as string[]) {
      const base = key.replace(/\.(\*|<host>)$/, '')
      assert.ok(paths.has(base), `${key} is not a configuration key`)
    }
  })

  it('lists files that exist', async () => {
    const files = tableAfter('| file | what it is |').map((r) => /^`([^`]+)`$/.exec(r[0] ?? '')?.[1])
    assert.ok(files.length >= 6)
    for (const f of files) {
      assert.ok(
        f && (await stat(fileURLToPath(new URL(f, ROOT))).catch(() => undefined)),
        `${f} does not exist`
      )
    }
  })
})
