import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { parse as parseToml } from 'smol-toml'
import { parse as parseYaml } from 'yaml'
import { loadConfig, validateConfig } from '../../../src/config/load.ts'
import { configSchema } from '../../../src/config/schema.ts'

const deploy = (path: string) => fileURLToPath(new URL(`../../../deploy/${path}`, import.meta.url))
const EXAMPLE = deploy('shoal.example.yaml')

/** Dotted paths of every leaf key of the config schema. */
function schemaKeys(shape: Record<string, unknown>, prefix = ''): string[] {
  const out: string[] = []
  for (const [k, v] of Object.entries(shape)) {
    // biome-ignore lint/suspicious/noExplicitAny: walking zod internals of our own schema
    let t: any = v
    while (t?.def?.innerType || t?.def?.in) t = t.def.innerType ?? t.def.in
    if (t?.def?.type === 'object') out.push(...schemaKeys(t.def.shape, `${prefix}${k}.`))
    else out.push(`${prefix}${k}`)
  }
  return out
}

/** Dotted paths of every leaf of a parsed YAML document, with their values. */
function leaves(doc: Record<string, unknown>, prefix = ''): [string, unknown][] {
  return Object.entries(doc).flatMap(([k, v]) =>
    v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length > 0
      ? leaves(v as Record<string, unknown>, `${prefix}${k}.`)
      : [[`${prefix}${k}`, v] as [string, unknown]]
  )
}

/** TOML tables come back with a null prototype: plain objects compare with deepEqual. */
function plain(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value))
}

function at(obj: unknown, path: string): unknown {
  return path.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], obj)
}

describe('deploy/shoal.example.yaml', () => {
  it("loads with the agent's config loader", async () => {
    const c = await loadConfig({ file: EXAMPLE, env: {} })
    assert.equal(c.mirror.listen, '127.0.0.1:5050')
  })

  it('shows every key of the schema, and the defaults as they are', async () => {
    const text = await readFile(EXAMPLE, 'utf8')
    // Commented-out keys count: they show what is unset by default.
    const shown = new Set<string>()
    const stack: { indent: number; key: string }[] = []
    for (const raw of text.split('\n')) {
      // `  #   volumeGroup:` is `volumeGroup` at indent 4, under a commented `  # lvm:` at 2.
      const line = raw.replace(/^(\s*)# ?/, '$1')
      const m = /^(\s*)([A-Za-z][A-Za-z0-9]*):/.exec(line)
      if (!m) continue
      const indent = (m[1] ?? '').length
      while (stack.length > 0 && (stack[stack.length - 1]?.indent ?? 0) >= indent) stack.pop()
      stack.push({ indent, key: m[2] as string })
      shown.add(stack.map((s) => s.key).join('.'))
    }
    for (const key of schemaKeys(configSchema.shape as Record<string, unknown>)) {
      assert.ok(shown.has(key), `the example does not show ${key}`)
    }
    const defaults = validateConfig({})
    const example = validateConfig(parseYaml(text))
    for (const [path] of leaves(parseYaml(text))) {
      assert.deepEqual(at(example, path), at(defaults, path), `${path} is not the default`)
    }
  })

  it('the containerd and podman snippets point at its mirror', async () => {
    const c = await loadConfig({ file: EXAMPLE, env: {} })
    const hosts = plain(parseToml(await readFile(deploy('containerd/hosts.toml'), 'utf8'))) as {
      server?: string
      host: Record<string, { capabilities: string[] }>
    }
    // No server: the _default file serves every registry, each at its own address.
    assert.equal(hosts.server, undefined)
    assert.deepEqual(hosts.host, { [`http://${c.mirror.listen}`]: { capabilities: ['pull', 'resolve'] } })

    const podman = parseToml(await readFile(deploy('podman/registries.conf'), 'utf8')) as {
      registry: { location: string; mirror: { location: string; insecure: boolean }[] }[]
    }
    for (const r of podman.registry) {
      for (const m of r.mirror) {
        // containers/image sends no ?ns=: the registry rides as the first path component, which
        // the mirror reads as a registry host when it has a dot, a colon or is localhost.
        assert.equal(m.location, `${c.mirror.listen}/${r.location}`)
        assert.match(r.location, /[.:]|^localhost$/)
        assert.equal(m.insecure, true, 'the mirror speaks plain HTTP')
      }
    }
    assert.equal(podman.registry[0]?.location, c.mirror.defaultRegistry)
  })
})
