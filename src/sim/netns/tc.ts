/**
 * Link shaping with `tc` on the egress of a veth end: a token bucket (tbf) for the rate, and
 * netem above it for a one-way delay when one is asked for. Egress only: a node's upload is
 * shaped on its own end of its link, its download on the hub's end, so no ingress policing
 * (and no ifb device) is needed.
 */

import { NetemUnavailableError, NetnsSetupError } from '../../errors.ts'
import type { AbortOptions } from '../../interface/common.ts'
import type { Iproute } from './iproute.ts'

/** How one direction of a link is shaped. */
export interface LinkShape {
  /**
   * Bytes per second, counted as tc counts them: whole Ethernet frames, headers included.
   * Unset: no rate limit (a delay alone).
   */
  rate?: number
  /** One-way delay added to every packet (ms); needs the netem qdisc. */
  delayMs?: number
  /** How long a packet may wait in the rate limiter's queue before it is dropped (ms). */
  queueMs?: number
}

/** A qdisc's counters: what left the link (sent), and what it dropped. */
export interface EgressCounters {
  /** Bytes of the frames sent, Ethernet, IP and TCP headers included. */
  bytes: number
  /** Frames sent (a TSO/GSO burst counts once per segment on the wire). */
  packets: number
  drops: number
}

/** Bytes of headers on a full-size TCP segment over Ethernet with timestamps (14 + 20 + 32). */
export const TCP_FRAME_OVERHEAD = 66
/** Payload of a full-size segment at MTU 1500: 1500 - 20 (IP) - 32 (TCP with timestamps). */
export const TCP_MSS = 1448

/** How long a packet may wait in the token bucket's queue before it is dropped, by default (ms). */
export const DEFAULT_QUEUE_MS = 300
/** The bucket holds this much time of traffic, and never less than MIN_BURST bytes. */
const BURST_MS = 20
const MIN_BURST = 32 * 1024

/** Replaces the root qdisc of `dev` in `ns` with `shape`. */
export async function shapeEgress(
  iproute: Iproute,
  ns: string,
  dev: string,
  shape: LinkShape,
  options: AbortOptions = {}
): Promise<void> {
  const { rate, delayMs } = shape
  if (rate !== undefined && !(rate > 0))
    throw new NetnsSetupError(`${ns}/${dev}: rate ${rate} is not positive`)
  const base = ['-n', ns, 'qdisc', 'replace', 'dev', dev]
  const tbf =
    rate === undefined
      ? undefined
      : [
          'tbf',
          'rate',
          `${Math.round(rate * 8)}bit`,
          'burst',
          String(Math.max(MIN_BURST, Math.round((rate * BURST_MS) / 1000))),
          'latency',
          `${shape.queueMs ?? DEFAULT_QUEUE_MS}ms`
        ]
  if (delayMs === undefined || delayMs <= 0) {
    if (tbf !== undefined) await iproute.tc([...base, 'root', 'handle', '1:', ...tbf], options)
    return
  }
  try {
    await iproute.tc([...base, 'root', 'handle', '1:', 'netem', 'delay', `${delayMs}ms`], options)
  } catch (err) {
    throw netemError(err)
  }
  if (tbf !== undefined) await iproute.tc([...base, 'parent', '1:1', 'handle', '10:', ...tbf], options)
}

/** The counters of the root qdisc of `dev` in `ns`. */
export async function egressCounters(
  iproute: Iproute,
  ns: string,
  dev: string,
  options: AbortOptions = {}
): Promise<EgressCounters> {
  const out = await iproute.tc(['-n', ns, '-s', '-j', 'qdisc', 'show', 'dev', dev], options)
  const qdiscs = JSON.parse(out) as { root?: boolean; bytes?: number; packets?: number; drops?: number }[]
  const root = qdiscs.find((q) => q.root) ?? qdiscs[0]
  if (root === undefined) throw new NetnsSetupError(`${ns}/${dev}: no qdisc to read counters from`)
  return { bytes: root.bytes ?? 0, packets: root.packets ?? 0, drops: root.drops ?? 0 }
}

/**
 * An estimate of the TCP payload in `c`: every frame's headers taken off. Exact for data
 * segments and bare ACKs with timestamps; SACK blocks and the handshakes make it a little low.
 */
export function payloadBytes(c: EgressCounters): number {
  return Math.max(0, c.bytes - TCP_FRAME_OVERHEAD * c.packets)
}

/**
 * Whether netem works in this kernel: adds it to the loopback of `ns` (a namespace the caller
 * made for the purpose) and removes it again.
 */
export async function netemWorks(iproute: Iproute, ns: string, options: AbortOptions = {}): Promise<boolean> {
  try {
    await iproute.tc(['-n', ns, 'qdisc', 'add', 'dev', 'lo', 'root', 'netem', 'delay', '10ms'], options)
  } catch (err) {
    if (netemError(err) instanceof NetemUnavailableError) return false
    throw err
  }
  await iproute.tc(['-n', ns, 'qdisc', 'delete', 'dev', 'lo', 'root'], options)
  return true
}

function netemError(err: unknown): unknown {
  if (err instanceof NetnsSetupError && /qdisc kind is unknown|Unknown qdisc/i.test(err.message)) {
    return new NetemUnavailableError(
      'this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM, module sch_netem): links cannot be given a latency',
      { cause: err }
    )
  }
  return err
}
