import type { ShoalConfig } from './schema.ts'

/**
 * The configuration keys a running agent applies on a reload (SIGHUP), as dotted paths; a key
 * under one of them counts as it. A change to any other key waits for a restart.
 */
export const LIVE_KEYS: readonly string[] = [
  'log.level',
  'store.quota',
  'fetch.downloadRate',
  'swarm.uploadRate',
  'registries',
  'upstream'
]

/** What a reload changes. */
export interface ReloadPlan {
  /** Changed keys the agent applies now (dotted paths, sorted). */
  applied: string[]
  /** Changed keys that take effect only at the next restart (dotted paths, sorted). */
  restart: string[]
  /** The configuration to run with from now on: the running one with the live changes taken. */
  config: ShoalConfig
}

/**
 * Compares the running configuration with a newly loaded one, key by key. The plan's `config`
 * keeps every restart-only key as it runs now, so what the agent reports (`shoal status`)
 * is what it does. Values are never part of the plan: keys only, credentials stay out of logs.
 */
export function planReload(running: ShoalConfig, next: ShoalConfig): ReloadPlan {
  const before = leaves(running)
  const after = leaves(next)
  const changed = new Set<string>()
  for (const key of new Set([...before.keys(), ...after.keys()])) {
    if (before.get(key) !== after.get(key)) changed.add(key)
  }
  const applied = [...changed].filter(isLive).sort()
  const restart = [...changed].filter((k) => !isLive(k)).sort()
  const config = structuredClone(running)
  for (const key of LIVE_KEYS) setPath(config, key, getPath(next, key))
  return { applied, restart, config }
}

function isLive(key: string): boolean {
  return LIVE_KEYS.some((k) => key === k || key.startsWith(`${k}.`))
}

/** Every leaf of a configuration (arrays are leaves) as its JSON text, by dotted path. */
function leaves(value: unknown, prefix = '', out = new Map<string, string>()): Map<string, string> {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) leaves(v, prefix ? `${prefix}.${k}` : k, out)
    return out
  }
  if (value !== undefined && prefix) out.set(prefix, JSON.stringify(value))
  return out
}

function getPath(root: unknown, path: string): unknown {
  let cur = root
  for (const part of path.split('.')) cur = (cur as Record<string, unknown> | undefined)?.[part]
  return cur
}

function setPath(root: object, path: string, value: unknown): void {
  const parts = path.split('.')
  let cur = root as Record<string, unknown>
  for (const part of parts.slice(0, -1)) cur = cur[part] as Record<string, unknown>
  const last = parts[parts.length - 1] as string
  if (value === undefined) delete cur[last]
  else cur[last] = structuredClone(value)
}
