import { readFile } from 'node:fs/promises'
import { parse as parseYaml } from 'yaml'
import { ConfigInvalidError } from '../errors.ts'
import { configSchema, type ShoalConfig } from './schema.ts'

/** Environment variables the agent reads, mapped to config paths. */
export const ENV_VARS: Readonly<Record<string, string>> = {
  SHOAL_STORE_DIR: 'storeDir',
  SHOAL_STORE_QUOTA: 'store.quota',
  SHOAL_PIECE_SIZE: 'store.pieceSize',
  SHOAL_SOCKET: 'socket.path',
  SHOAL_MIRROR_LISTEN: 'mirror.listen',
  SHOAL_MIRROR_DEFAULT_REGISTRY: 'mirror.defaultRegistry',
  SHOAL_PLATFORM: 'platform',
  SHOAL_LOG_LEVEL: 'log.level'
}

export interface LoadConfigOptions {
  /** Path of a YAML (or JSON) config file. */
  file?: string
  /** Environment to read `SHOAL_*` from (the process environment by default). */
  env?: Record<string, string | undefined>
  /** Values from command-line flags, by config path (`store.quota`) — they win over everything. */
  overrides?: Record<string, unknown>
}

/**
 * Builds the configuration from file, environment and flags (later wins), validates it once,
 * and throws one `ConfigInvalidError` listing every problem with its path.
 */
export async function loadConfig(options: LoadConfigOptions = {}): Promise<ShoalConfig> {
  let raw: Record<string, unknown> = {}
  if (options.file !== undefined) {
    let text: string
    try {
      text = await readFile(options.file, 'utf8')
    } catch (err) {
      throw new ConfigInvalidError(`cannot read config file ${options.file}: ${(err as Error).message}`)
    }
    raw = parseConfigText(text, `config file ${options.file}`)
  }
  const env = options.env ?? process.env
  for (const [name, path] of Object.entries(ENV_VARS)) {
    const v = env[name]
    if (v !== undefined && v !== '') setPath(raw, path, v)
  }
  for (const [path, v] of Object.entries(options.overrides ?? {})) {
    if (v !== undefined) setPath(raw, path, v)
  }
  return validateConfig(raw, options.file)
}

/**
 * The mapping a config file's text (YAML, or JSON) holds, not validated yet: `{}` for an empty
 * file. Throws `ConfigInvalidError` for text that is not YAML or whose top level is not a mapping.
 */
export function parseConfigText(text: string, source = 'config file'): Record<string, unknown> {
  let doc: unknown
  try {
    doc = parseYaml(text)
  } catch (err) {
    throw new ConfigInvalidError(`${source} is not valid YAML: ${(err as Error).message}`)
  }
  if (doc === null || doc === undefined) return {}
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw new ConfigInvalidError(`${source} must hold a mapping at the top level`)
  }
  return doc as Record<string, unknown>
}

/** Validates a raw config object; throws `ConfigInvalidError` listing every problem. */
export function validateConfig(raw: unknown, source = 'configuration'): ShoalConfig {
  const result = configSchema.safeParse(raw)
  if (result.success) return result.data
  const lines = result.error.issues.map((i) => {
    const path = i.path.length > 0 ? i.path.join('.') : '(top level)'
    return `  ${path}: ${i.message}`
  })
  throw new ConfigInvalidError(`invalid ${source}:\n${lines.join('\n')}`)
}

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.')
  let cur: Record<string, unknown> = target
  for (const part of parts.slice(0, -1)) {
    const next = cur[part]
    if (typeof next !== 'object' || next === null || Array.isArray(next)) cur[part] = {}
    cur = cur[part] as Record<string, unknown>
  }
  cur[parts[parts.length - 1] as string] = value
}
