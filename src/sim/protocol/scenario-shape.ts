/**
 * What the protocol level reads from a scenario: per-node rates, the image's layers and piece
 * size, arrival times, the agent settings that have a counterpart in the agent's config, and
 * T_min as the model computes it. Arrival times are the model's (`scenarioToInit(s).arrivals`)
 * when it has them; fields the scenario schema may gain (`workload.spread`, `image.layers`,
 * `topology.latency`) are read defensively.
 */
import { MAX_PIECE_SIZE, MIN_PIECE_SIZE } from '../../constants.ts'
import { TCP_FRAME_OVERHEAD, TCP_MSS } from '../netns/tc.ts'
import { mulberry32 } from '../random.ts'
import { type Scenario, scenarioToInit } from '../scenario.ts'
import { layerSizes } from './image.ts'

/** Wire bytes per payload byte of full-size TCP segments: tc rates are raised by this. */
export const FRAMING = (TCP_MSS + TCP_FRAME_OVERHEAD) / TCP_MSS

/** The protocol level's reading of a scenario. */
export interface ProtocolShape {
  nodes: number
  /** Payload rates (bytes per second) per node, as the scenario gives them. */
  upload: number[]
  download: number[]
  registryUpload: number
  layerSizes: number[]
  /** F: the layers' bytes (the scenario's size, rounded to a tar's 512-byte blocks). */
  imageBytes: number
  pieceSize: number
  /** Seconds after the start at which each node pulls. */
  arrivals: number[]
  /** One-way delay per shaped direction (ms), when the scenario gives a latency. */
  delayMs: number | undefined
  /** Each rate limiter's queue (ms), from the scenario's `sendBuffer`; absent, tc's default. */
  queueMs: number | undefined
  /** The agent config the scenario's `shoal` settings map to. */
  agentConfig: Record<string, unknown>
  /** Scenario settings the agents have no setting for (the model's alone). */
  ignored: string[]
  tMin: number
}

/** Reads `s` for a protocol-level run. */
export function protocolShape(s: Scenario): ProtocolShape {
  const n = s.topology.nodes
  const perNode = (r: number | readonly number[]) =>
    Array.from({ length: n }, (_, i) => (typeof r === 'number' ? r : (r[i] as number)))
  const upload = perNode(s.topology.upload)
  const download = perNode(s.topology.download)
  const image = s.image as typeof s.image & { layers?: unknown }
  const sizes = Array.isArray(image.layers)
    ? image.layers.map((x) => layerSizes(Number(x))[0] as number)
    : layerSizes(image.size, typeof image.layers === 'number' ? image.layers : 1)
  const imageBytes = sizes.reduce((a, b) => a + b, 0)
  const rawPiece = image.pieceSize ?? Math.ceil(image.size / (image.pieces ?? 1))
  const pieceSize = Math.min(MAX_PIECE_SIZE, Math.max(MIN_PIECE_SIZE, rawPiece))
  // The model's own arrival times when its init has them, so both levels pull at the same moments.
  const modelArrivals = (scenarioToInit(s) as { arrivals?: readonly number[] }).arrivals
  const spread = Number((s as { workload?: { spread?: unknown } }).workload?.spread ?? 0)
  const random = mulberry32(s.seed)
  const arrivals =
    modelArrivals?.length === n
      ? [...modelArrivals]
      : Array.from({ length: n }, () => (spread > 0 ? random() * spread : 0))
  const latency = Number((s.topology as { latency?: unknown }).latency ?? 0)
  const o = s.shoal
  // The swarm settings the agent shares with the model, under the same names.
  const swarm: Record<string, unknown> = {}
  for (const key of ['concurrentUploads', 'registryFetchers', 'starvingTakesAny']) {
    const v = (o as Record<string, unknown>)[key]
    if (v !== undefined) swarm[key] = v
  }
  const agentConfig: Record<string, unknown> = {
    store: { pieceSize },
    ...(o.registryWindow !== undefined && { fetch: { registryConcurrency: o.registryWindow } }),
    ...(Object.keys(swarm).length > 0 && { swarm })
  }
  // The model's send buffer is what the links' rate limiters queue here.
  const mapped = new Set(['registryWindow', 'sendBuffer', ...Object.keys(swarm)])
  const ignored = Object.keys(o).filter((k) => !mapped.has(k))
  const faults = (s as { faults?: Record<string, unknown> }).faults
  if (faults !== undefined && Object.keys(faults).length > 0) ignored.push('faults (not played here)')
  if (pieceSize !== rawPiece) ignored.push(`pieceSize ${rawPiece} (the agent takes ${pieceSize})`)
  const sumUp = upload.reduce((a, b) => a + b, 0)
  const tMin = Math.max(
    imageBytes / s.topology.registryUpload,
    imageBytes / Math.min(...download),
    (n * imageBytes) / (s.topology.registryUpload + sumUp)
  )
  return {
    nodes: n,
    upload,
    download,
    registryUpload: s.topology.registryUpload,
    layerSizes: sizes,
    imageBytes,
    pieceSize,
    arrivals,
    // A latency in seconds, as every time in a scenario: half on each shaped direction it crosses.
    delayMs: latency > 0 ? (latency * 1000) / 2 : undefined,
    queueMs: o.sendBuffer === undefined ? undefined : o.sendBuffer * 1000,
    agentConfig,
    ignored,
    tMin
  }
}
