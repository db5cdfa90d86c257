import { fileURLToPath } from 'node:url'
import ts from 'typescript'

/** One value to check against a type that a package declares. */
export interface LiteralCheck {
  /** Names the value in problems, e.g. `daemonset.yaml: DaemonSet shoal`. */
  label: string
  /** Module the type comes from, resolved from the repository root. */
  module: string
  /** Exported type name, e.g. `IDaemonSet`. */
  type: string
  value: unknown
}

// Resolved like a file of the repository, so packages come from its node_modules; it is never
// written to disk.
const VIRTUAL = fileURLToPath(new URL('./literal-check.virtual.ts', import.meta.url))

const OPTIONS: ts.CompilerOptions = {
  strict: true,
  noEmit: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  skipLibCheck: true,
  types: [],
  lib: ['lib.es2022.d.ts']
}

/** The last program: the next check reuses its parsed declaration files. */
let previous: ts.Program | undefined

/**
 * Type-checks each value, written out as an object literal, against a type from a package's
 * declarations, and returns every problem as `label: message`. Object literals get
 * TypeScript's excess property check at every depth, so a misspelled key anywhere is reported,
 * which the JSON schemas of kubernetes-models (open objects) let through. TypeScript reports the
 * first problem of each value only.
 */
export function literalTypeProblems(checks: readonly LiteralCheck[]): string[] {
  const lines: string[] = []
  const starts: number[] = []
  const modules = [...new Set(checks.map((c) => c.module))]
  const alias = new Map<string, string>()
  for (const [i, m] of modules.entries()) {
    lines.push(`import type * as M${i} from ${JSON.stringify(m)}`)
    alias.set(m, `M${i}`)
  }
  let offset = lines.join('\n').length + 1
  for (const [i, c] of checks.entries()) {
    const line = `export const v${i}: ${alias.get(c.module)}.${c.type} = ${JSON.stringify(c.value)}`
    starts.push(offset)
    lines.push(line)
    offset += line.length + 1
  }
  const source = lines.join('\n')
  const host = ts.createCompilerHost(OPTIONS)
  const getSourceFile = host.getSourceFile.bind(host)
  const fileExists = host.fileExists.bind(host)
  host.getSourceFile = (file, language, ...rest) =>
    file === VIRTUAL ? ts.createSourceFile(file, source, language) : getSourceFile(file, language, ...rest)
  host.fileExists = (file) => file === VIRTUAL || fileExists(file)
  const program = ts.createProgram([VIRTUAL], OPTIONS, host, previous)
  previous = program
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const message = ts.flattenDiagnosticMessageText(d.messageText, ' ')
    if (d.file?.fileName !== VIRTUAL || d.start === undefined) return `(type check) ${message}`
    const start = d.start
    const index = starts.findLastIndex((s) => s <= start)
    const label = checks[index]?.label ?? '(imports)'
    return `${label}: ${message}`
  })
}
