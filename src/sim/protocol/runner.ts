/**
 * The protocol level of the simulator: a scenario played by real agents (real libp2p, real
 * store) and the real registry, each in its own network namespace, on links shaped by `tc`
 * with the agents' own rate caps off, so the network, not the agent, is the limit. It returns
 * the figures the model returns (completion, registry egress, uploads, T_min, a timeline), so
 * the two levels can be set side by side. It stops by itself and always removes every
 * namespace, link, process and file it made.
 */

import { setMaxListeners } from 'node:events'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { systemClock } from '../../clock.ts'
import { AbortedError, SimulationTimeoutError } from '../../errors.ts'
import type { Clock } from '../../interface/clock.ts'
import type { AbortOptions } from '../../interface/common.ts'
import { generateSwarmKey } from '../../p2p/swarm-key.ts'
import { claimRun, removeRun } from '../netns/cleanup.ts'
import { Iproute } from '../netns/iproute.ts'
import { newRunPrefix, runNames } from '../netns/names.ts'
import { createStar, type StarNetwork } from '../netns/star.ts'
import type { Scenario } from '../scenario.ts'
import type { SwarmTimeline } from '../timeline.ts'
import { type AgentBuild, type NetnsAgent, startNetnsAgent } from './agents.ts'
import { crowd } from './crowd.ts'
import { generateImage } from './image.ts'
import { blobBytesFromLog, type NetnsRegistry, pushToStorage, startNetnsRegistry } from './registry.ts'
import { FRAMING, type ProtocolShape, protocolShape } from './scenario-shape.ts'

const REGISTRY_PORT = 5000
/** Agents started at once after the first (each start costs a second of CPU or more). */
const START_CONCURRENCY = 3

/**
 * TCP in every namespace. TCP small queues let one socket hold 4 MiB in the qdisc by default on
 * this kernel, far more than a rate limiter's queue, which then drops (a 3-node run with 100 ms
 * queues: 485 drops on the uploads and 376 on the downloads, whose packets the senders sent
 * again: registry egress 1.18 F on the wire for 1.08 F of blob bodies); 16 KiB with 300 ms
 * queues took most drops away. Reno, not the
 * host's BBR: BBR ignores the drops of a full local queue and keeps sending into it (10 nodes:
 * 137,000 drops on the uploads with BBR, 21,000 with Reno, the same completion times).
 */
export const TCP_SETTINGS: Readonly<Record<string, string | number>> = {
  'net.ipv4.tcp_limit_output_bytes': 16384,
  'net.ipv4.tcp_congestion_control': 'reno'
}

/** Collaborators of a run. */
export interface ProtocolComponents {
  iproute: Iproute
  clock: Clock
}

/** How to run; every field has a default. */
export interface ProtocolRunOptions extends AbortOptions {
  /** The run's prefix, `shl<4 hex>-` (default: a fresh one). */
  prefix?: string
  /** Run the compiled agent (`dist/`, default) or the sources through tsx. */
  build?: AgentBuild
  /** The run's time limit from its start (default 60 s for setup plus 10 x T_min). */
  timeoutMs?: number
  /** Seconds between timeline samples (default 0.5). */
  sampleEvery?: number
  /** Raise tc rates by the TCP/IP framing of full segments (default true; see FRAMING). */
  framing?: boolean
  /** Queue of each link's rate limiter (ms; default the scenario's `sendBuffer`, else DEFAULT_QUEUE_MS, 300). */
  queueMs?: number
  /** Kernel parameters for every namespace's TCP (default TCP_SETTINGS). */
  sysctl?: Readonly<Record<string, string | number>>
  /** Keep the scratch directory (configs, logs) after the run; the namespaces always go. */
  keepFiles?: boolean
  /** Extra agent config, merged over what the scenario maps to. */
  agentConfig?: Record<string, unknown>
  /** A line for each step and each node done. */
  onProgress?: (line: string) => void
  /** Called once every agent is up, just before the pulls (tests inject failures here). */
  onAgentsReady?: (run: { prefix: string; pids: number[] }) => void
}

/** What a protocol-level run measured; times in seconds, bytes as counted where said. */
export interface ProtocolResult {
  prefix: string
  shape: ProtocolShape
  /** Each node's completion time, seconds from the moment the first pull was made. */
  completion: number[]
  /**
   * Bytes that left the registry's link while the nodes pulled: tc's counter on its egress,
   * whole Ethernet frames (HTTP, TCP/IP and Ethernet headers, retransmissions, manifests and
   * the config included).
   */
  registryEgress: number
  /** The same counter with 66 bytes of headers taken off every frame: the TCP payload. */
  registryEgressPayload: number
  /** Blob body bytes the registry's log says it wrote. */
  registryBlobBytes: number
  /** Bytes that left each node's link (tc's counter; peer uploads, plus ACKs and requests). */
  uploaded: number[]
  uploadedPayload: number[]
  /** Bytes that reached each node over its link (tc's counter on the hub's end). */
  downloaded: number[]
  /** Bytes each node's pull took from peers (the agent's own count). */
  fromPeers: number[]
  /** Packets tc dropped from full queues: the registry's link, each node's up and down. */
  drops: { registry: number; up: number[]; down: number[] }
  /** The Kumar-Ross bound max(F/u_s, F/d_min, N F / (u_s + sum u_i)) on the scenario's rates. */
  tMin: number
  /**
   * CPU seconds the registry and each agent used while the nodes pulled, and how long that
   * took: what this machine's cores had to carry.
   */
  cpu: { pullSeconds: number; registry: number; agents: number[] }
  /** Completed nodes and registry bytes over time; minReplicas is -1: not observable here. */
  timeline: SwarmTimeline
  manifestDigest: string
  /** Seconds spent building the network, pushing the image and starting the agents. */
  setupSeconds: number
}

/** Runs `scenario` on real agents in network namespaces. */
export async function runProtocolScenario(
  scenario: Scenario,
  options: ProtocolRunOptions = {},
  components: ProtocolComponents = { iproute: new Iproute(), clock: systemClock }
): Promise<ProtocolResult> {
  const { iproute, clock } = components
  const shape = protocolShape(scenario)
  const say = options.onProgress ?? (() => {})
  const timeoutMs = Math.round(options.timeoutMs ?? 60_000 + 10_000 * shape.tMin)
  const timeout = AbortSignal.timeout(timeoutMs)
  const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout
  // Each node's pull and wait listens on it.
  setMaxListeners(8 * shape.nodes + 16, signal)
  const prefix = options.prefix ?? newRunPrefix()
  const names = runNames(prefix)
  const started = clock.now()
  await iproute.check({ signal })
  await mkdir(names.dir, { recursive: true })
  await claimRun(names.dir)

  let registry: NetnsRegistry | undefined
  const agents: NetnsAgent[] = []
  try {
    const image = generateImage(shape.layerSizes, scenario.seed)
    const repository = `sim/${scenario.name}`
    const place = { dir: join(names.dir, 'registry'), dataDir: join(names.dir, 'registry', 'data') }
    await pushToStorage(place, repository, 'latest', image, { signal })
    say(
      `pushed ${repository}: ${shape.layerSizes.length} layer(s), ${(shape.imageBytes / 2 ** 20).toFixed(1)} MiB`
    )

    const wire = options.framing === false ? 1 : FRAMING
    const star = await createStar(
      iproute,
      {
        names,
        nodes: shape.upload.map((u, i) => ({
          upload: u * wire,
          download: (shape.download[i] as number) * wire
        })),
        registryUpload: shape.registryUpload * wire,
        ...(shape.delayMs !== undefined && { delayMs: shape.delayMs }),
        ...((options.queueMs ?? shape.queueMs) !== undefined && {
          queueMs: options.queueMs ?? shape.queueMs
        }),
        sysctl: options.sysctl ?? TCP_SETTINGS
      },
      { signal }
    )
    say(
      `network ${prefix}*: ${shape.nodes} node namespaces, a registry namespace and a hub, links shaped by tc`
    )
    registry = await startNetnsRegistry(star.registry.ns, star.registry.address, REGISTRY_PORT, place, {
      signal
    })
    await startAgents(agents, star, registry, shape, options, names.dir, signal)
    say(`${agents.length} agents up (${((clock.now() - started) / 1000).toFixed(1)} s of setup)`)
    options.onAgentsReady?.({ prefix, pids: [registry.process.pid, ...agents.map((a) => a.process.pid)] })
    const setupSeconds = (clock.now() - started) / 1000

    const reference = `${registry.host}/${repository}:latest`
    const measured = await crowd(
      agents,
      registry.process.pid,
      star,
      reference,
      shape,
      components,
      options,
      signal,
      say
    )
    for (const a of agents) await a.stop()
    await registry.stop()
    for (const [i, d] of measured.digests.entries()) {
      if (d !== image.manifest.digest) throw new Error(`node ${i} pulled ${d}, not ${image.manifest.digest}`)
    }
    return {
      prefix,
      shape,
      ...measured.figures,
      registryBlobBytes: await blobBytesFromLog(registry.logFile),
      tMin: shape.tMin,
      manifestDigest: image.manifest.digest,
      setupSeconds
    }
  } catch (err) {
    if (timeout.aborted) {
      throw new SimulationTimeoutError(`the run did not finish within ${(timeoutMs / 1000).toFixed(0)} s`, {
        cause: err
      })
    }
    if (options.signal?.aborted) throw new AbortedError('the run was aborted', { cause: err })
    throw err
  } finally {
    await Promise.allSettled([...agents.map((a) => a.stop()), registry?.stop()])
    const removed = await removeRun(iproute, prefix, options.keepFiles)
    say(
      `removed ${removed.namespaces.length} namespaces${removed.pids.length > 0 ? ` and ${removed.pids.length} leftover processes` : ''}`
    )
  }
}

async function startAgents(
  agents: NetnsAgent[],
  star: StarNetwork,
  registry: NetnsRegistry,
  shape: ProtocolShape,
  options: ProtocolRunOptions,
  dir: string,
  signal: AbortSignal
): Promise<void> {
  const keyFile = join(dir, 'swarm.key')
  await writeFile(keyFile, generateSwarmKey(), { mode: 0o600 })
  const config = { ...shape.agentConfig, ...options.agentConfig }
  const start = (i: number, bootstrap: string[]) => {
    const end = star.nodes[i]
    if (end === undefined) throw new RangeError(`no node ${i}`)
    return startNetnsAgent(
      {
        index: i,
        ns: end.ns,
        address: end.address,
        dir: join(dir, `n${i}`),
        build: options.build ?? 'dist',
        registry,
        keyFile,
        bootstrap,
        config
      },
      { signal }
    )
  }
  const first = await start(0, [])
  agents.push(first)
  const bootstrap = (await first.status()).swarm?.addresses ?? []
  let next = 1
  const worker = async () => {
    for (let i = next++; i < star.nodes.length; i = next++) agents.push(await start(i, bootstrap))
  }
  await Promise.all(Array.from({ length: START_CONCURRENCY }, worker))
  agents.sort((a, b) => a.index - b.index)
  // Every agent has joined the swarm (knows at least one peer) before anyone pulls.
  for (const a of agents) {
    while (((await a.status()).swarm?.peers ?? 0) < 1) {
      signal.throwIfAborted()
      await sleep(100)
    }
  }
}
