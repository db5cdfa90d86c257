import { type ChildProcess, spawn } from 'node:child_process'

/** A daemon the test harness started: its process, its exit, and its recent output. */
export interface Daemon {
  child: ChildProcess
  exited: Promise<number | null>
  /** stdout and stderr so far (the last few thousand chunks), for failure messages. */
  logs(): string
  /** SIGTERM, then SIGKILL after 5 s; resolves once it has exited. */
  kill(): Promise<void>
}

/** Spawns `bin args` with stdout and stderr collected. */
export function spawnDaemon(bin: string, args: string[]): Daemon {
  const output: string[] = []
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  const collect = (chunk: Buffer): void => {
    output.push(chunk.toString('utf8'))
    if (output.length > 2000) output.splice(0, output.length - 1000)
  }
  child.stdout?.on('data', collect)
  child.stderr?.on('data', collect)
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  return {
    child,
    exited,
    logs: () => output.join(''),
    kill: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
    }
  }
}
