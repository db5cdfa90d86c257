/**
 * Scenario files for the model simulator: a topology, an image, the Shoal settings the model
 * takes, and a seed. Sizes and rates take the same units as the agent's config ("64MiB",
 * "1MiB" per second, or plain bytes); times are seconds.
 */
import { readFile } from 'node:fs/promises'
import { z } from 'zod'
import { parseSize } from '../config/units.ts'
import { ScenarioInvalidError } from '../errors.ts'
import type { SwarmModelInit } from './swarm-model.ts'

const size = () =>
  z.union([z.string(), z.number()]).transform((v, ctx) => {
    const n = parseSize(v)
    if (n === undefined || n <= 0) {
      ctx.addIssue({ code: 'custom', message: `"${v}" is not a positive size (e.g. 64MiB, 1MiB, 1048576)` })
      return z.NEVER
    }
    return n
  })

/** One rate for all nodes, or one per node; each bad entry is reported at its index. */
const rates = () =>
  z
    .union([z.string(), z.number(), z.array(z.union([z.string(), z.number()])).nonempty()])
    .transform((v, ctx) => {
      const list = Array.isArray(v) ? v : [v]
      const out: number[] = []
      for (const [i, x] of list.entries()) {
        const n = parseSize(x)
        if (n === undefined || n <= 0) {
          ctx.addIssue({
            code: 'custom',
            path: Array.isArray(v) ? [i] : [],
            message: `"${x}" is not a positive rate (bytes per second, e.g. 1MiB or 1048576)`
          })
          return z.NEVER
        }
        out.push(n)
      }
      return Array.isArray(v) ? out : out[0]!
    })

const seconds = () => z.number().nonnegative()

/** The schema of a scenario file. */
export const scenarioSchema = z
  .object({
    name: z.string().regex(/^[a-z0-9][a-z0-9-]*$/, 'lowercase letters, digits and dashes'),
    description: z.string().optional(),
    seed: z.number().int(),
    topology: z
      .object({
        nodes: z.number().int().positive(),
        /** Each node's upload rate per second: one size for all, or one per node. */
        upload: rates(),
        download: rates(),
        registryUpload: size(),
        /** One-way latency of every link (s): HAVEs and claims take this long to arrive. */
        latency: seconds().optional()
      })
      .strict(),
    image: z
      .object({
        size: size(),
        pieceSize: size().optional(),
        pieces: z.number().int().positive().optional()
      })
      .strict()
      .refine((i) => (i.pieceSize === undefined) !== (i.pieces === undefined), {
        message: 'give exactly one of pieceSize and pieces'
      }),
    shoal: z
      .object({
        lookupDelay: seconds().optional(),
        haveLatency: seconds().optional(),
        peerDepth: z.number().int().positive().optional(),
        maxPeerFlights: z.number().int().positive().optional(),
        registryWindow: z.number().int().positive().optional(),
        claimTtl: seconds().optional(),
        patience: seconds().optional(),
        maxPeers: z.number().int().positive().optional(),
        concurrentUploads: z.number().int().positive().optional(),
        /** Seconds a refused node waits before asking that peer again; 0: the uploader picks (see the model). */
        busyRetry: z.number().nonnegative().optional(),
        /** Seconds of a node's uplink its send buffers hold (see the model's `sendBuffer`). */
        sendBuffer: z.number().nonnegative().optional(),
        registryFetchers: z.number().int().positive().optional(),
        starvingTakesAny: z.boolean().optional()
      })
      .strict()
      .default({}),
    /** Who pulls when: all at 0 by default. */
    workload: z
      .object({
        /** Arrivals spread evenly over this many seconds. */
        spread: seconds().optional(),
        /** A rolling update: the nodes pull in `count` waves, `interval` seconds apart. */
        waves: z.object({ count: z.number().int().positive(), interval: seconds() }).strict().optional()
      })
      .strict()
      .default({}),
    faults: z
      .object({
        churnPerMinute: z.number().min(0).max(1).optional(),
        churnUntil: seconds().optional(),
        kill: z.object({ at: seconds(), count: z.number().int().positive() }).strict().optional(),
        registryDownAfter: z.union([seconds(), z.literal('first-copy')]).optional(),
        malicious: z.number().int().nonnegative().optional()
      })
      .strict()
      .default({})
  })
  .strict()
  .superRefine((s, ctx) => {
    for (const key of ['upload', 'download'] as const) {
      const v = s.topology[key]
      if (Array.isArray(v) && v.length !== s.topology.nodes) {
        ctx.addIssue({
          code: 'custom',
          path: ['topology', key],
          message: `has ${v.length} rates for ${s.topology.nodes} nodes`
        })
      }
    }
  })

/** A validated scenario. */
export type Scenario = z.output<typeof scenarioSchema>

/** Validates parsed JSON as a scenario; `source` names it in errors. */
export function parseScenario(json: unknown, source = 'scenario'): Scenario {
  const r = scenarioSchema.safeParse(json)
  if (r.success) return r.data
  const lines = r.error.issues.map(
    (i) => `  ${i.path.length > 0 ? i.path.join('.') : '(root)'}: ${i.message}`
  )
  throw new ScenarioInvalidError(`${source} is not a valid scenario:\n${lines.join('\n')}`)
}

/** Reads and validates a scenario file. */
export async function loadScenario(path: string): Promise<Scenario> {
  const text = await readFile(path, 'utf8')
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new ScenarioInvalidError(`${path} is not JSON: ${(err as Error).message}`)
  }
  return parseScenario(json, path)
}

/** When each node starts its pull, from the scenario's workload (seconds). */
export function arrivals(s: Scenario): number[] | undefined {
  const n = s.topology.nodes
  const { spread, waves } = s.workload
  if (waves !== undefined) {
    const per = Math.ceil(n / waves.count)
    return Array.from({ length: n }, (_, i) => Math.floor(i / per) * waves.interval)
  }
  if (spread !== undefined && spread > 0) return Array.from({ length: n }, (_, i) => (spread * i) / n)
  return undefined
}

/** The model's init for a scenario. */
export function scenarioToInit(s: Scenario): SwarmModelInit {
  const pieces = s.image.pieces ?? Math.ceil(s.image.size / s.image.pieceSize!)
  const o = s.shoal
  const latency = s.topology.latency
  const at = arrivals(s)
  const f = s.faults
  // A DHT lookup walks about log2(N) hops, each a round trip.
  const lookup =
    latency === undefined ? undefined : 2 * latency * Math.ceil(Math.log2(Math.max(2, s.topology.nodes)))
  return {
    nodes: s.topology.nodes,
    imageBytes: s.image.size,
    pieces,
    upload: s.topology.upload,
    download: s.topology.download,
    registryUpload: s.topology.registryUpload,
    seed: s.seed,
    ...(at !== undefined && { arrivals: at }),
    ...((o.lookupDelay ?? lookup) !== undefined && { lookupDelay: o.lookupDelay ?? lookup }),
    ...((o.haveLatency ?? latency) !== undefined && { haveLatency: o.haveLatency ?? latency }),
    ...(o.maxPeers !== undefined && { maxPeers: o.maxPeers }),
    ...(o.concurrentUploads !== undefined && { concurrentUploads: o.concurrentUploads }),
    ...(o.busyRetry !== undefined && { busyRetry: o.busyRetry }),
    ...(o.sendBuffer !== undefined && { sendBuffer: o.sendBuffer }),
    ...(o.registryFetchers !== undefined && { registryFetchers: o.registryFetchers }),
    ...(o.starvingTakesAny !== undefined && { starvingTakesAny: o.starvingTakesAny }),
    ...(Object.keys(f).length > 0 && { faults: f }),
    ...(o.peerDepth !== undefined && { peerDepth: o.peerDepth }),
    ...(o.maxPeerFlights !== undefined && { maxPeerFlights: o.maxPeerFlights }),
    ...(o.registryWindow !== undefined && { registryWindow: o.registryWindow }),
    ...(o.claimTtl !== undefined && { claimTtlMs: o.claimTtl * 1000 }),
    ...(o.patience !== undefined && { patience: o.patience })
  }
}
