/** Helpers the swarm benchmarks share: start agents, pull through their socket, stop them. */
import { readFile } from 'node:fs/promises'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Logger } from 'pino'
import { streamAgent } from '../../src/cli/socket-client.ts'
import type { PullEvent } from '../../src/fetch/image-puller.ts'
import { parseSwarmKey } from '../../src/p2p/swarm-key.ts'
import { SwarmNode } from '../../src/p2p/swarm-node.ts'
import { removeAgentDir, startAgent, type TestAgent } from '../harness/agent.ts'

/** The bare-stream protocol the throughput benchmark's peer process serves raw bytes on. */
export const RAW_PROTOCOL = '/shoal/bench-raw/1.0.0'

/**
 * A swarm node (not yet started) listening on a loopback port, with a fresh Ed25519 identity
 * and the swarm key in `keyFile`: one end of the throughput benchmark.
 */
export async function loopbackSwarmNode(keyFile: string, logger: Logger): Promise<SwarmNode> {
  const swarmKey = parseSwarmKey(await readFile(keyFile, 'utf8'))
  return new SwarmNode(
    { logger },
    {
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: [],
      swarmKey,
      privateKey: await generateKeyPair('Ed25519')
    }
  )
}

export interface PullResult {
  ms: number
  bytes: Record<string, number>
}

/** Pulls `reference` through the agent's socket API; resolves when it is done. */
export async function pull(agent: TestAgent, reference: string): Promise<PullResult> {
  const started = performance.now()
  for await (const e of streamAgent<PullEvent>(agent.socket, '/v1/pull', { reference })) {
    if (e.type === 'done')
      return { ms: performance.now() - started, bytes: e.bytes as Record<string, number> }
    if ((e as { type: string }).type === 'error') throw new Error(JSON.stringify(e))
  }
  throw new Error('pull ended without a result')
}

/**
 * Starts `n` agents of the compiled build against `registryUrl` (for `registryHost`'s images);
 * with `keyFile` they form one swarm, every node bootstrapping from the first.
 */
export async function startAgents(
  n: number,
  registry: { host: string; url: string },
  options: { keyFile?: string; config?: Record<string, unknown> } = {}
): Promise<TestAgent[]> {
  const agents: TestAgent[] = []
  const { swarm: extraSwarm, ...extra } = (options.config ?? {}) as { swarm?: Record<string, unknown> }
  try {
    for (let i = 0; i < n; i++) {
      const bootstrap = i === 0 ? [] : ((await agents[0]?.status())?.swarm?.addresses ?? [])
      const swarm = options.keyFile
        ? {
            enabled: true,
            listen: ['/ip4/127.0.0.1/tcp/0'],
            bootstrap,
            keyFile: options.keyFile,
            ...extraSwarm
          }
        : { enabled: false }
      agents.push(
        await startAgent({
          registries: { [registry.host]: { url: registry.url } },
          built: true,
          config: { ...extra, swarm }
        })
      )
    }
  } catch (err) {
    await stopAgents(agents)
    throw err
  }
  return agents
}

export async function stopAgents(agents: TestAgent[]): Promise<void> {
  for (const a of agents) {
    await a.stop()
    await removeAgentDir(a)
  }
}

/** The value at quantile `q` (0..1) of `values`, nearest rank. */
export function quantile(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? Number.NaN
}
