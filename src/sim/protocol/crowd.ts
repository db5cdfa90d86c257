/**
 * The measured part of a protocol-level run: every node pulls at its arrival time while the
 * registry's tc counter is sampled into the timeline; the links' counters are read before and
 * after, so only what the pulls moved is counted.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { cpuSeconds } from '../netns/process.ts'
import type { StarNetwork } from '../netns/star.ts'
import { type EgressCounters, egressCounters, payloadBytes } from '../netns/tc.ts'
import { TimelineRecorder } from '../timeline.ts'
import type { NetnsAgent } from './agents.ts'
import type { ProtocolComponents, ProtocolResult, ProtocolRunOptions } from './runner.ts'
import type { ProtocolShape } from './scenario-shape.ts'

/** What `crowd` measured, and the manifest digest each node ended with. */
export interface CrowdFigures {
  figures: Pick<
    ProtocolResult,
    | 'completion'
    | 'registryEgress'
    | 'registryEgressPayload'
    | 'uploaded'
    | 'uploadedPayload'
    | 'downloaded'
    | 'fromPeers'
    | 'drops'
    | 'timeline'
    | 'cpu'
  >
  digests: string[]
}

/** Every node pulls at its arrival time; the registry's counter is sampled meanwhile. */
export async function crowd(
  agents: NetnsAgent[],
  registryPid: number,
  star: StarNetwork,
  reference: string,
  shape: ProtocolShape,
  { iproute, clock }: ProtocolComponents,
  options: ProtocolRunOptions,
  signal: AbortSignal,
  say: (line: string) => void
): Promise<CrowdFigures> {
  const reg = star.registry
  // The registry's process, then each agent's.
  const pids = [registryPid, ...agents.map((a) => a.process.pid)]
  const registryCounter = () => egressCounters(iproute, reg.ns, reg.dev, { signal })
  const nodeUp = (i: number) => egressCounters(iproute, star.nodes[i]!.ns, star.nodes[i]!.dev, { signal })
  const nodeDown = (i: number) => egressCounters(iproute, star.names.hub, star.nodes[i]!.hubDev, { signal })
  const cpu = () => Promise.all(pids.map(cpuSeconds))
  const base = {
    cpu: await cpu(),
    registry: await registryCounter(),
    up: await Promise.all(agents.map((_, i) => nodeUp(i))),
    down: await Promise.all(agents.map((_, i) => nodeDown(i)))
  }
  const every = options.sampleEvery ?? 0.5
  const recorder = new TimelineRecorder(every)
  const completion: number[] = agents.map(() => Number.NaN)
  const fromPeers: number[] = agents.map(() => 0)
  const digests: string[] = agents.map(() => '')
  let done = 0
  const t0 = clock.now()
  const elapsed = () => (clock.now() - t0) / 1000
  const sample = async (force = false) => {
    const c = await registryCounter()
    recorder.sample(elapsed(), done, c.bytes - base.registry.bytes, -1, force)
  }
  await sample(true)
  const pulls = agents.map(async (a, i) => {
    await sleep((shape.arrivals[i] ?? 0) * 1000, undefined, { signal })
    const e = await a.pull(reference)
    completion[i] = elapsed()
    fromPeers[i] = e.bytes.peer ?? 0
    digests[i] = e.manifestDigest
    done++
    const peers = e.totalBytes > 0 ? (100 * (e.bytes.peer ?? 0)) / e.totalBytes : 0
    say(
      `node ${i} done at ${completion[i]?.toFixed(1)} s (${done}/${agents.length}), ${peers.toFixed(0)} % from peers`
    )
  })
  const all = Promise.all(pulls)
  const aborted = new Promise<never>((_, reject) => {
    const fail = () => reject(signal.reason)
    if (signal.aborted) fail()
    else signal.addEventListener('abort', fail, { once: true })
  })
  aborted.catch(() => undefined)
  all.catch(() => undefined)
  let finished = false
  const sampler = (async () => {
    while (!finished) {
      await Promise.race([sleep(every * 1000), all]).catch(() => undefined)
      if (!finished && !signal.aborted) await sample().catch(() => undefined)
    }
  })()
  try {
    await Promise.race([all, aborted])
  } finally {
    finished = true
    await sampler
  }
  await sample(true)
  const pullSeconds = elapsed()
  const end = {
    cpu: await cpu(),
    registry: await registryCounter(),
    up: await Promise.all(agents.map((_, i) => nodeUp(i))),
    down: await Promise.all(agents.map((_, i) => nodeDown(i)))
  }
  const delta = (a: EgressCounters, b: EgressCounters): EgressCounters => ({
    bytes: a.bytes - b.bytes,
    packets: a.packets - b.packets,
    drops: a.drops - b.drops
  })
  const reg0 = delta(end.registry, base.registry)
  const ups = end.up.map((u, i) => delta(u, base.up[i]!))
  return {
    figures: {
      completion,
      registryEgress: reg0.bytes,
      registryEgressPayload: payloadBytes(reg0),
      uploaded: ups.map((u) => u.bytes),
      uploadedPayload: ups.map(payloadBytes),
      downloaded: end.down.map((d, i) => d.bytes - base.down[i]!.bytes),
      fromPeers,
      cpu: {
        pullSeconds,
        registry: (end.cpu[0] ?? 0) - (base.cpu[0] ?? 0),
        agents: agents.map((_, i) => (end.cpu[i + 1] ?? 0) - (base.cpu[i + 1] ?? 0))
      },
      drops: {
        registry: reg0.drops,
        up: ups.map((u) => u.drops),
        down: end.down.map((d, i) => d.drops - base.down[i]!.drops)
      },
      timeline: recorder.timeline
    },
    digests
  }
}
