import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import type { AbortOptions } from '../interface/common.ts'

const execFileAsync = promisify(execFile)

/** Output kept from a failed command, enough for an error message. */
const MAX_OUTPUT = 64 * 1024

/**
 * Runs a program to completion. A component, so that the rest of the materializer never touches
 * `child_process` and tests can see (or replace) every command it runs.
 */
export interface CommandRunner {
  /** Runs `file` with `args` (no shell); rejects with the program's stderr when it fails. */
  run(file: string, args: readonly string[], options?: AbortOptions): Promise<void>
}

/**
 * The real runner: `execFile`, no shell, so an argument (a path from a layer) is never parsed
 * as anything but one argument.
 */
export const execFileRunner: CommandRunner = {
  async run(file, args, options = {}) {
    try {
      await execFileAsync(file, [...args], { signal: options.signal, maxBuffer: MAX_OUTPUT })
    } catch (err) {
      const stderr = (err as { stderr?: string }).stderr?.trim()
      const why = stderr ? stderr : err instanceof Error ? err.message : String(err)
      throw new Error(`${file} failed: ${why}`, { cause: err })
    }
  }
}
