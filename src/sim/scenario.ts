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
        registryUpload: size()
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
        patience: seconds().optional()
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

/** The model's init for a scenario. */
export function scenarioToInit(s: Scenario): SwarmModelInit {
  const pieces = s.image.pieces ?? Math.ceil(s.image.size / s.image.pieceSize!)
  const o = s.shoal
  return {
    nodes: s.topology.nodes,
    imageBytes: s.image.size,
    pieces,
    upload: s.topology.upload,
    download: s.topology.download,
    registryUpload: s.topology.registryUpload,
    seed: s.seed,
    ...(o.lookupDelay !== undefined && { lookupDelay: o.lookupDelay }),
    ...(o.haveLatency !== undefined && { haveLatency: o.haveLatency }),
    ...(o.peerDepth !== undefined && { peerDepth: o.peerDepth }),
    ...(o.maxPeerFlights !== undefined && { maxPeerFlights: o.maxPeerFlights }),
    ...(o.registryWindow !== undefined && { registryWindow: o.registryWindow }),
    ...(o.claimTtl !== undefined && { claimTtlMs: o.claimTtl * 1000 }),
    ...(o.patience !== undefined && { patience: o.patience })
  }
}
