import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { describe, it } from 'node:test'
import { ShoalMetrics } from '../../../src/api/metrics.ts'
import { configSchema } from '../../../src/config/schema.ts'
import { HTTP_STATUS } from '../../../src/errors.ts'

const readme = await readFile(new URL('../../../README.md', import.meta.url), 'utf8')

/** Dotted paths of every leaf key of the config schema (records shown as `<host>`). */
function leafKeys(shape: Record<string, unknown>, prefix = ''): string[] {
  const out: string[] = []
  for (const [k, v] of Object.entries(shape)) {
    // biome-ignore lint/suspicious/noExplicitAny: walking zod internals of our own schema
    let t: any = v
    while (t?.def?.innerType || t?.def?.in) t = t.def.innerType ?? t.def.in
    if (t?.def?.type === 'object') out.push(...leafKeys(t.def.shape, `${prefix}${k}.`))
    else out.push(`${prefix}${k}`)
  }
  return out
}

// The README is the reference operators read: it must not drift from the code.
describe('README reference tables', () => {
  it('documents every error code with its HTTP status', () => {
    for (const [code, status] of Object.entries(HTTP_STATUS)) {
      assert.match(
        readme,
        new RegExp(`\\| \`${code}\` \\| ${status} \\|`),
        `README lacks ${code} (${status})`
      )
    }
  })

  it('documents every configuration key', () => {
    const keys = leafKeys(configSchema.shape as Record<string, unknown>)
    assert.ok(keys.includes('store.quota') && keys.includes('upstream.bodyTimeout'), keys.join(' '))
    for (const key of keys) {
      const shown = key === 'registries' ? 'registries.<host>.url' : key
      assert.ok(readme.includes(`\`${shown}\``), `README lacks config key ${shown}`)
    }
  })

  it('documents every metric', async () => {
    const metrics = new ShoalMetrics()
    const names = (await metrics.registry.getMetricsAsJSON())
      .map((m) => m.name)
      .filter((n) => !/^shoal_(process|nodejs)_/.test(n))
    assert.ok(names.length >= 10)
    for (const name of names) assert.ok(readme.includes(name), `README lacks metric ${name}`)
  })
})
