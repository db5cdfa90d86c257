import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseAllDocuments } from 'yaml'
import { literalTypeProblems } from './literal-types.ts'

/** One Kubernetes object read from a manifest file. */
export interface Manifest {
  file: string
  doc: { apiVersion?: string; kind?: string; metadata?: { name?: string } } & Record<string, unknown>
}

/** Packages that hold a model (a JSON schema validator and a TypeScript interface) per API group. */
const MODEL_PACKAGES: Record<string, string> = {
  '': 'kubernetes-models',
  apps: 'kubernetes-models',
  'rbac.authorization.k8s.io': 'kubernetes-models',
  'monitoring.coreos.com': '@kubernetes-models/prometheus-operator'
}

/**
 * Reads every document of a manifest file as the API server would: YAML 1.1, where `0400` is
 * octal and `0o400` a string. Throws on a YAML error.
 */
export async function readManifests(file: string, label = file): Promise<Manifest[]> {
  const text = await readFile(file, 'utf8')
  const out: Manifest[] = []
  for (const d of parseAllDocuments(text, { version: '1.1' })) {
    if (d.errors.length > 0) throw new Error(`${label}: ${d.errors.map((e) => e.message).join('; ')}`)
    const doc = d.toJS()
    if (doc !== null && doc !== undefined) out.push({ file: label, doc })
  }
  return out
}

/** Module path of the model of `apiVersion` + `kind`, e.g. `kubernetes-models/apps/v1/DaemonSet`. */
export function modelModule(apiVersion: string, kind: string): string | undefined {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion]
  const pkg = MODEL_PACKAGES[group ?? '']
  if (pkg === undefined || !version || !/^[A-Z][A-Za-z]+$/.test(kind)) return undefined
  return `${pkg}/${group ? `${group}/` : ''}${version}/${kind}`
}

/**
 * Validates manifests against the Kubernetes models: the model's JSON schema (types, formats,
 * required fields, enums) and its TypeScript interface as an object literal (unknown fields at
 * any depth). Returns every problem, `file: Kind name: message`; none means valid.
 */
export async function manifestProblems(manifests: readonly Manifest[]): Promise<string[]> {
  const problems: string[] = []
  const checks = []
  for (const { file, doc } of manifests) {
    const label = `${file}: ${doc.kind ?? '(no kind)'} ${doc.metadata?.name ?? '(no name)'}`
    const module =
      typeof doc.apiVersion === 'string' && typeof doc.kind === 'string'
        ? modelModule(doc.apiVersion, doc.kind)
        : undefined
    if (module === undefined) {
      problems.push(`${label}: no model for apiVersion ${doc.apiVersion} kind ${doc.kind}`)
      continue
    }
    const exports = (await import(module)) as Record<string, new (data: unknown) => { validate(): void }>
    const Model = exports[doc.kind as string]
    if (!Model) {
      problems.push(`${label}: ${module} exports no ${doc.kind}`)
      continue
    }
    try {
      new Model(doc).validate()
    } catch (err) {
      problems.push(`${label}: ${(err as Error).message}`)
    }
    checks.push({ label, module, type: `I${doc.kind}`, value: doc })
  }
  problems.push(...literalTypeProblems(checks))
  return problems
}

/** The parts of a kustomization.yaml these manifests use. */
export interface Kustomization {
  kind: string
  namespace?: string
  resources?: string[]
  components?: string[]
  configMapGenerator?: { name: string; files?: string[] }[]
  images?: { name: string; newName?: string; newTag?: string }[]
}

/** Reads `<dir>/kustomization.yaml`. */
export async function readKustomization(dir: string): Promise<Kustomization> {
  const [k] = await readManifests(join(dir, 'kustomization.yaml'))
  return k?.doc as unknown as Kustomization
}

/** `key=file` or `file` of a configMapGenerator: the ConfigMap key and the file. */
export function generatorFile(entry: string): { key: string; file: string } {
  const i = entry.indexOf('=')
  return i < 0 ? { key: entry, file: entry } : { key: entry.slice(0, i), file: entry.slice(i + 1) }
}
