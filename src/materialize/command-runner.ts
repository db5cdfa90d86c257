import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import type { AbortOptions } from '../interface/common.ts'

const execFileAsync = promisify(execFile)

/** Output kept from a command: enough for an error message, or an `lvs` report of many volumes. */
const MAX_OUTPUT = 16 * 1024 * 1024

/** What a command that succeeded printed. */
export interface CommandOutput {
  stdout: string
}

/**
 * Runs a program to completion. A component, so that the rest of the materializer never touches
 * `child_process` and tests can see (or replace) every command it runs.
 */
export interface CommandRunner {
  /**
   * Runs `file` with `args` (no shell, stdin closed) and resolves with its standard output;
   * rejects with the program's stderr when it fails.
   */
  run(file: string, args: readonly string[], options?: AbortOptions): Promise<CommandOutput>
}

/**
 * The real runner: `execFile`, no shell, so an argument (a path from a layer) is never parsed
 * as anything but one argument. Stdin is closed at once, so a program that asks a question
 * (LVM before it wipes a signature) reads end-of-file and gives up instead of waiting forever.
 */
export const execFileRunner: CommandRunner = {
  async run(file, args, options = {}) {
    try {
      const running = execFileAsync(file, [...args], {
        signal: options.signal,
        maxBuffer: MAX_OUTPUT,
        encoding: 'utf8'
      })
      running.child.stdin?.end()
      const { stdout } = await running
      return { stdout }
    } catch (err) {
      const stderr = (err as { stderr?: string }).stderr?.trim()
      const why = stderr ? stderr : err instanceof Error ? err.message : String(err)
      throw new Error(`${file} failed: ${why}`, { cause: err })
    }
  }
}
