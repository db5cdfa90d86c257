/**
 * Real `shoal agent` processes, one in each node namespace, each with its own store, socket and
 * config, listening for peers on its namespace's address. The runner talks to them through
 * their unix sockets, which a namespace does not hide.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { stringify } from 'yaml'
import { callAgent, streamAgent } from '../../cli/socket-client.ts'
import type { PullEvent } from '../../fetch/image-puller.ts'
import type { AbortOptions } from '../../interface/common.ts'
import { type NetnsProcess, spawnInNetns } from '../netns/process.ts'

const READY_TIMEOUT_MS = 60_000
/** The libp2p port every agent listens on (each namespace has its own). */
export const SWARM_PORT = 4001

const HERE = fileURLToPath(import.meta.url)
/** The repository root (this file is src/sim/protocol/agents.ts or dist/sim/protocol/agents.js). */
const ROOT = join(HERE, '..', '..', '..', '..')

/** Which agent to run: the compiled build (`npm run build`), or the sources through tsx. */
export type AgentBuild = 'dist' | 'source'

/** The argv that runs `shoal agent --config <file>` for `build`. */
export function agentCommand(build: AgentBuild, configFile: string): string[] {
  return build === 'dist'
    ? [process.execPath, join(ROOT, 'dist', 'cli', 'main.js'), 'agent', '--config', configFile]
    : [
        process.execPath,
        '--import',
        'tsx',
        join(ROOT, 'src', 'cli', 'main.ts'),
        'agent',
        '--config',
        configFile
      ]
}

/** What the status endpoint reports that the runner reads. */
export interface NodeStatus {
  swarm: { peerId: string; addresses: string[]; peers: number } | null
  bytes: { fetched: Record<string, number> }
}

/** An agent in a namespace. */
export interface NetnsAgent {
  index: number
  ns: string
  socket: string
  process: NetnsProcess
  status(): Promise<NodeStatus>
  /**
   * Pulls `reference` through the socket and resolves with the `done` event. It ends when the
   * agent ends the stream: stopping the agent is how a run abandons a pull.
   */
  pull(reference: string): Promise<PullEvent & { type: 'done' }>
  stop(): Promise<void>
}

/** What one agent is given. */
export interface NetnsAgentInit {
  index: number
  ns: string
  /** Its namespace's address: the swarm listens there. */
  address: string
  /** Its directory (config, store, socket, log). */
  dir: string
  build: AgentBuild
  /** `host:port` of the registry and its URL. */
  registry: { host: string; url: string }
  keyFile: string
  bootstrap: string[]
  /** Extra config merged at the top level (store, fetch, log, ...). */
  config?: Record<string, unknown>
}

/** Starts an agent and waits until its socket answers. */
export async function startNetnsAgent(init: NetnsAgentInit, options: AbortOptions = {}): Promise<NetnsAgent> {
  await mkdir(init.dir, { recursive: true })
  const socket = join(init.dir, 's.sock')
  const configFile = join(init.dir, 'agent.yaml')
  const { swarm: extraSwarm, ...extra } = (init.config ?? {}) as { swarm?: Record<string, unknown> }
  await writeFile(
    configFile,
    stringify({
      storeDir: join(init.dir, 'store'),
      socket: { path: socket },
      registries: { [init.registry.host]: { url: init.registry.url } },
      log: { level: 'info' },
      ...extra,
      mirror: { listen: '127.0.0.1:0' },
      swarm: {
        enabled: true,
        listen: [`/ip4/${init.address}/tcp/${SWARM_PORT}`],
        bootstrap: init.bootstrap,
        keyFile: init.keyFile,
        ...extraSwarm
      }
    })
  )
  const proc = spawnInNetns(init.ns, agentCommand(init.build, configFile), {
    logFile: join(init.dir, 'agent.log'),
    cwd: ROOT
  })
  const status = () => callAgent<NodeStatus>(socket, 'GET', '/v1/status')
  const deadline = performance.now() + READY_TIMEOUT_MS
  for (;;) {
    try {
      options.signal?.throwIfAborted()
      if (!proc.running()) throw new Error(`agent ${init.index} exited:\n${proc.tail()}`)
      if (performance.now() > deadline) throw new Error(`agent ${init.index} did not answer:\n${proc.tail()}`)
      if (
        await status().then(
          () => true,
          () => false
        )
      )
        break
      await sleep(100)
    } catch (err) {
      await proc.stop()
      throw err
    }
  }
  return {
    index: init.index,
    ns: init.ns,
    socket,
    process: proc,
    status,
    pull: async (reference) => {
      // The stream is read to its end whatever comes: leaving it early while the response is
      // still open would leave the response's later 'aborted' error (when the agent stops)
      // with no listener, and that ends this process.
      let end: PullEvent | { type: 'error'; code: string } | undefined
      for await (const e of streamAgent<PullEvent | { type: 'error'; code: string; message?: string }>(
        socket,
        '/v1/pull',
        { reference }
      )) {
        if (e.type === 'done' || e.type === 'error') end = e
      }
      if (end?.type === 'done') return end
      throw new Error(`agent ${init.index}: the pull ended without a result: ${JSON.stringify(end ?? null)}`)
    },
    stop: () => proc.stop()
  }
}
