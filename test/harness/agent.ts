import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { stringify } from 'yaml'
import { callAgent, streamAgent } from '../../src/cli/socket-client.ts'
import type { PullEvent } from '../../src/fetch/image-puller.ts'

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
const BUILT_MAIN = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url))

export interface TestAgentInit {
  /** Upstreams by registry host: `{ url }` or `{ layout }`. */
  registries: Record<string, Record<string, unknown>>
  /** Reuse a store (restart tests). */
  storeDir?: string
  /** Extra config merged at the top level (store, upstream, fetch, ...). */
  config?: Record<string, unknown>
  /** Run the compiled build (`npm run build`) instead of the sources through tsx: benchmarks. */
  built?: boolean
}

export interface AgentStatus {
  mirror: string
  store: { usedBytes: number; blobs: number; completeBlobs: number }
  transfers: { digest: string; piecesHeld: number; pieceCount: number }[]
  bytes: { fetched: Record<string, number>; served: Record<string, number> }
  swarm: { peerId: string; addresses: string[]; peers: number; announced: number } | null
}

/** A real `shoal agent` process on loopback with its own store, socket and mirror port. */
export interface TestAgent {
  pid: number
  dir: string
  storeDir: string
  socket: string
  /** host:port of the registry mirror. */
  mirror: string
  status(): Promise<AgentStatus>
  metrics(): Promise<string>
  /** Log lines (JSON) the agent wrote so far. */
  logs(): string
  /** SIGTERM and wait. */
  stop(): Promise<void>
  /** SIGKILL and wait: a crash. */
  kill(): Promise<void>
}

/** Starts an agent and waits until its socket answers. */
export async function startAgent(init: TestAgentInit): Promise<TestAgent> {
  const dir = await mkdtemp(join(tmpdir(), 'sh-a-'))
  const socket = join(dir, 's.sock')
  const storeDir = init.storeDir ?? join(dir, 'store')
  const configFile = join(dir, 'agent.yaml')
  await writeFile(
    configFile,
    stringify({
      storeDir,
      socket: { path: socket },
      registries: init.registries,
      log: { level: 'info' },
      ...init.config,
      // A free port always, whatever else the test says about the mirror.
      mirror: { ...(init.config?.mirror as Record<string, unknown> | undefined), listen: '127.0.0.1:0' }
    })
  )
  let output = ''
  const child: ChildProcess = spawn(
    process.execPath,
    init.built
      ? [BUILT_MAIN, 'agent', '--config', configFile]
      : ['--import', 'tsx', MAIN, 'agent', '--config', configFile],
    {
      stdio: ['ignore', 'pipe', 'pipe']
    }
  )
  child.stdout?.on('data', (d) => {
    output += d
  })
  child.stderr?.on('data', (d) => {
    output += d
  })
  const exited = new Promise<void>((r) => child.once('exit', () => r()))
  let alive = true
  exited.then(() => {
    alive = false
  })
  let status: AgentStatus | undefined
  for (let i = 0; i < 200 && alive; i++) {
    try {
      const s = await callAgent<AgentStatus>(socket, 'GET', '/v1/status')
      // The socket answers before the mirror listens: until it does, it reports port 0.
      if (s.mirror?.endsWith(':0')) throw new Error('the mirror is not listening yet')
      status = s
      break
    } catch {
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  if (!status) {
    child.kill('SIGKILL')
    await exited
    throw new Error(`agent did not start:\n${output}`)
  }
  const end = async (signal: NodeJS.Signals) => {
    if (alive) child.kill(signal)
    await exited
  }
  return {
    pid: child.pid as number,
    dir,
    storeDir,
    socket,
    mirror: status.mirror,
    status: () => callAgent<AgentStatus>(socket, 'GET', '/v1/status'),
    metrics: async () => {
      const res = await fetch(`http://${status.mirror}/metrics`)
      return res.text()
    },
    logs: () => output,
    stop: () => end('SIGTERM'),
    kill: () => end('SIGKILL')
  }
}

/** Removes an agent's working directory (after stop). */
export async function removeAgentDir(a: TestAgent): Promise<void> {
  await rm(a.dir, { recursive: true, force: true })
}

/** What a pull through the agent's socket ends with: its `done` event, or the `error` that ends the stream. */
export type PullEnd = PullEvent | { type: 'error'; code: string }

/** Pulls `reference` through the agent's socket and returns the last event of the stream. */
export async function lastPullEvent(agent: TestAgent, reference: string): Promise<PullEnd> {
  let last: PullEnd | undefined
  for await (const e of streamAgent<PullEvent>(agent.socket, '/v1/pull', { reference })) last = e
  assert.ok(last)
  return last
}

/** Pulls `reference` through the agent's socket; fails the test unless the pull is `done`. */
export async function pullDone(agent: TestAgent, reference: string): Promise<PullEvent & { type: 'done' }> {
  const last = await lastPullEvent(agent, reference)
  assert.ok(last.type === 'done', JSON.stringify(last))
  return last
}

/** Polls `check` every 100 ms until it holds; throws after `ms`. */
export async function until(what: string, check: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** True while process `pid` runs. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
