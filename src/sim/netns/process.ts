/**
 * Long-running processes inside a network namespace (`ip netns exec <ns> ...`): the registry
 * and the agents of a protocol-level run. `ip` and `setpriv` both exec, so the pid is the
 * program's own; `setpriv --pdeathsig KILL` (when present) makes the kernel kill it if this
 * process dies without cleaning up. The only place the simulator spawns.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { accessSync, constants, createWriteStream, type WriteStream } from 'node:fs'
import { readFile } from 'node:fs/promises'

/** Kept in memory from a process's output, for error messages. */
const TAIL_BYTES = 16 * 1024
const SETPRIV = '/usr/bin/setpriv'

/** A process started by `spawnInNetns`. */
export interface NetnsProcess {
  readonly pid: number
  /** Resolves with the exit code (null when killed by a signal) once the process is gone. */
  readonly exited: Promise<number | null>
  running(): boolean
  /** The last few kilobytes of its standard output and error. */
  tail(): string
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it is gone. Idempotent. */
  stop(graceMs?: number): Promise<void>
}

/** How to start one. */
export interface SpawnInit {
  /** Write standard output and error here too (appended). */
  logFile?: string
  env?: NodeJS.ProcessEnv
  cwd?: string
}

let setprivPresent: boolean | undefined

/** Starts `argv` in namespace `ns` (in this process's own when `ns` is undefined). */
export function spawnInNetns(
  ns: string | undefined,
  argv: readonly string[],
  init: SpawnInit = {}
): NetnsProcess {
  setprivPresent ??= executable(SETPRIV)
  const guarded = setprivPresent ? [SETPRIV, '--pdeathsig', 'KILL', '--', ...argv] : [...argv]
  const [file, ...args] = ns === undefined ? guarded : ['ip', 'netns', 'exec', ns, ...guarded]
  const child: ChildProcess = spawn(file as string, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(init.env && { env: init.env }),
    ...(init.cwd && { cwd: init.cwd })
  })
  let log: WriteStream | undefined
  if (init.logFile) log = createWriteStream(init.logFile, { flags: 'a' })
  let tail = ''
  const keep = (chunk: Buffer) => {
    log?.write(chunk)
    tail = (tail + chunk.toString('utf8')).slice(-TAIL_BYTES)
  }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  let alive = child.pid !== undefined
  const exited = new Promise<number | null>((resolve) => {
    child.once('error', (err) => {
      tail += `\n${err.message}`
      alive = false
      resolve(null)
    })
    child.once('close', (code) => {
      alive = false
      log?.end()
      resolve(code)
    })
  })
  let stopping: Promise<void> | undefined
  return {
    pid: child.pid ?? -1,
    exited,
    running: () => alive,
    tail: () => tail,
    stop: (graceMs = 5000) => {
      stopping ??= (async () => {
        if (!alive) return
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
        await exited
        clearTimeout(timer)
      })()
      return stopping
    }
  }
}

/** Clock ticks per second of /proc/<pid>/stat's times (USER_HZ: 100 on Linux x86 and arm). */
const USER_HZ = 100

/** CPU seconds (user and system) process `pid` has used so far; 0 when it is gone. */
export async function cpuSeconds(pid: number): Promise<number> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
  const utime = Number(fields[11] ?? 0)
  const stime = Number(fields[12] ?? 0)
  return Number.isFinite(utime + stime) ? (utime + stime) / USER_HZ : 0
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}
