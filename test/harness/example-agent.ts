/**
 * A real `shoal agent` process started from deploy/shoal.example.yaml, as an operator would,
 * with only what a test must change overridden (store, socket, mirror port, swarm on loopback).
 * Unlike `startAgent` it keeps its config file to rewrite, signals it (SIGHUP, SIGTERM) and
 * reports how it exited and what it logged, parsed: the daemon's lifecycle is what is tested.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse, stringify } from 'yaml'
import type { Readiness } from '../../src/api/health.ts'
import { callAgent } from '../../src/cli/socket-client.ts'
import type { Status } from '../../src/cli/status-command.ts'
import { until } from './agent.ts'

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
const EXAMPLE = fileURLToPath(new URL('../../deploy/shoal.example.yaml', import.meta.url))

/** One pino line the agent wrote. */
export interface LogLine {
  level: number
  msg: string
  component?: string
  [key: string]: unknown
}

export interface ExampleAgentInit {
  /** Merged over the example, key by key (maps merge, anything else replaces). */
  overrides?: Record<string, unknown>
  /** Reuse a store (restart tests); a fresh one under the agent's directory by default. */
  storeDir?: string
}

/** The agent's status as `/v1/status` has it, with the swarm fields the tests read. */
export type ExampleStatus = Status

export interface ExampleAgent {
  pid: number
  dir: string
  storeDir: string
  socket: string
  /** host:port of the mirror (and of `/metrics`, `/healthz`, `/readyz`). */
  mirror: string
  configFile: string
  /** The configuration written, as an object: change it and `writeConfig` it. */
  config: Record<string, unknown>
  writeConfig(config: Record<string, unknown> | string): Promise<void>
  /** Sends SIGHUP and waits for the agent to log the reload's outcome; returns that line. */
  reload(): Promise<LogLine>
  signal(signal: NodeJS.Signals): void
  /** Resolves with the exit code once the process ends (null when a signal killed it). */
  exited: Promise<number | null>
  /** Every JSON line logged so far. */
  logs(): LogLine[]
  /** Everything written to stdout and stderr, for failure messages. */
  output(): string
  status(): Promise<ExampleStatus>
  readyz(): Promise<{ status: number; body: Readiness }>
  metrics(): Promise<string>
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>
}

/** Starts an agent from the example configuration and waits until its mirror listens. */
export async function startExampleAgent(init: ExampleAgentInit = {}): Promise<ExampleAgent> {
  const dir = await mkdtemp(join(tmpdir(), 'sh-ex-'))
  const socket = join(dir, 's.sock')
  const storeDir = init.storeDir ?? join(dir, 'store')
  const configFile = join(dir, 'shoal.yaml')
  const example = parse(await readFile(EXAMPLE, 'utf8')) as Record<string, unknown>
  const config = merge(merge(example, init.overrides ?? {}), {
    storeDir,
    socket: { path: socket },
    mirror: { listen: '127.0.0.1:0' }
  })
  // The example's swarm port is fixed: a free loopback one unless the test chose its own.
  const swarmOverride = init.overrides?.swarm as Record<string, unknown> | undefined
  if (swarmOverride?.listen === undefined && isMap(config.swarm)) {
    config.swarm = { ...config.swarm, listen: ['/ip4/127.0.0.1/tcp/0'] }
  }
  await writeFile(configFile, stringify(config))

  let out = ''
  const child: ChildProcess = spawn(
    process.execPath,
    ['--import', 'tsx', MAIN, 'agent', '--config', configFile],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      // The example's environment variables must not leak in from the test's own.
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SHOAL_')))
    }
  )
  child.stdout?.on('data', (d) => {
    out += d
  })
  child.stderr?.on('data', (d) => {
    out += d
  })
  let alive = true
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      alive = false
      resolve(code)
    })
  )
  const logs = (): LogLine[] =>
    out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as LogLine)
  const status = () => callAgent<ExampleStatus>(socket, 'GET', '/v1/status')

  let mirror = ''
  try {
    await until(
      'the agent answers with its mirror listening',
      async () => {
        if (!alive) throw new Error(`agent exited:\n${out}`)
        const s = await status().catch(() => undefined)
        if (!s?.mirror || s.mirror.endsWith(':0')) return false
        mirror = s.mirror
        return true
      },
      30_000
    )
  } catch (err) {
    child.kill('SIGKILL')
    await exited
    throw err
  }

  const agent: ExampleAgent = {
    pid: child.pid as number,
    dir,
    storeDir,
    socket,
    mirror,
    configFile,
    config,
    writeConfig: async (c) => {
      await writeFile(configFile, typeof c === 'string' ? c : stringify(c))
    },
    reload: async () => {
      const before = logs().length
      child.kill('SIGHUP')
      let line: LogLine | undefined
      await until('the agent logs the reload', async () => {
        line = logs()
          .slice(before)
          .find((l) => /^configuration reload/.test(l.msg))
        return line !== undefined
      })
      return line as LogLine
    },
    signal: (s) => {
      if (alive) child.kill(s)
    },
    exited,
    logs,
    output: () => out,
    status,
    readyz: async () => {
      const res = await fetch(`http://${mirror}/readyz`)
      return { status: res.status, body: (await res.json()) as Readiness }
    },
    metrics: async () => (await fetch(`http://${mirror}/metrics`)).text(),
    stop: async () => {
      if (alive) child.kill('SIGTERM')
      return exited
    }
  }
  return agent
}

/** Stops an agent if it still runs (SIGKILL after 30 s) and removes its directory. */
export async function removeExampleAgent(a: ExampleAgent | undefined): Promise<void> {
  if (!a) return
  a.signal('SIGTERM')
  const timer = setTimeout(() => a.signal('SIGKILL'), 30_000)
  await a.exited
  clearTimeout(timer)
  await rm(a.dir, { recursive: true, force: true })
}

/** `over` merged into `base`: maps key by key, anything else replaced. Neither is changed. */
export function merge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base }
  for (const [k, v] of Object.entries(over)) {
    const b = out[k]
    out[k] = isMap(v) && isMap(b) ? merge(b, v) : v
  }
  return out
}

function isMap(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}
