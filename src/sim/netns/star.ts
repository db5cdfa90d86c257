/**
 * The simulated network: a hub namespace holding a bridge, and one namespace per node and for
 * the registry, each joined to the bridge by a veth pair. Each direction of each link is shaped
 * on the egress of the end it leaves from: a node's upload on its own end, its download on the
 * hub's end, the registry's upload on its own end (its download carries requests only and gets
 * the delay alone).
 * Traffic between namespaces never touches the host's network namespace.
 */
import type { AbortOptions } from '../../interface/common.ts'
import type { Iproute } from './iproute.ts'
import type { RunNames } from './names.ts'
import { type LinkShape, shapeEgress } from './tc.ts'

/** One end of the star: a namespace, its link and its address. */
export interface StarEndpoint {
  ns: string
  /** The link's name inside `ns`. */
  dev: string
  /** The other end's name inside the hub namespace. */
  hubDev: string
  /** IPv4 address on `dev`. */
  address: string
}

/** The network one run built. */
export interface StarNetwork {
  names: RunNames
  registry: StarEndpoint
  nodes: StarEndpoint[]
  /** Every namespace made, hub last. */
  namespaces(): string[]
}

/** The shape of the star's links. */
export interface StarInit {
  names: RunNames
  /** Each node's upload and download (bytes per second on the wire). */
  nodes: { upload: number; download: number }[]
  /** The registry's upload (bytes per second on the wire). */
  registryUpload: number
  /**
   * Delay (ms) added where each packet leaves a namespace and again where it enters one, so a
   * one-way trip between two ends takes twice this; needs netem.
   */
  delayMs?: number
  /** Queue of each rate limiter (ms; default DEFAULT_QUEUE_MS). */
  queueMs?: number
  /** Kernel parameters set in every node's and the registry's namespace (TCP settings). */
  sysctl?: Readonly<Record<string, string | number>>
  /** Called with each namespace as soon as it exists, so an interrupted build still removes it. */
  onNamespace?: (ns: string) => void
}

/** Addresses: the registry at 10.77.0.2, node i at 10.77.(1 + i / 250).(1 + i % 250), all /16. */
export function nodeAddress(i: number): string {
  return `10.77.${1 + Math.floor(i / 250)}.${1 + (i % 250)}`
}
export const REGISTRY_ADDRESS = '10.77.0.2'
const PREFIX_LENGTH = 16

/** Builds the star. On failure the namespaces made so far are left for the caller to remove. */
export async function createStar(
  iproute: Iproute,
  init: StarInit,
  options: AbortOptions = {}
): Promise<StarNetwork> {
  const { names } = init
  const made: string[] = []
  const addNs = async (ns: string) => {
    await iproute.addNetns(ns, options)
    made.push(ns)
    init.onNamespace?.(ns)
  }
  await addNs(names.hub)
  await iproute.addBridge(names.hub, names.bridge, options)
  const delay = {
    ...(init.delayMs !== undefined && { delayMs: init.delayMs }),
    ...(init.queueMs !== undefined && { queueMs: init.queueMs })
  }

  const join = async (
    end: { ns: string; dev: string; hubDev: string },
    address: string,
    up: LinkShape,
    down: LinkShape
  ): Promise<StarEndpoint> => {
    await addNs(end.ns)
    if (init.sysctl !== undefined) await iproute.sysctl(end.ns, init.sysctl, options)
    await iproute.addVeth({ name: end.dev, ns: end.ns }, { name: end.hubDev, ns: names.hub }, options)
    await iproute.setMaster(names.hub, end.hubDev, names.bridge, options)
    await iproute.addAddress(end.ns, end.dev, `${address}/${PREFIX_LENGTH}`, options)
    await shapeEgress(iproute, end.ns, end.dev, up, options)
    await shapeEgress(iproute, names.hub, end.hubDev, down, options)
    await iproute.setUp(end.ns, end.dev, options)
    await iproute.setUp(names.hub, end.hubDev, options)
    return { ...end, address }
  }

  const registry = await join(
    names.registry,
    REGISTRY_ADDRESS,
    { rate: init.registryUpload, ...delay },
    delay
  )
  const nodes: StarEndpoint[] = []
  for (const [i, n] of init.nodes.entries()) {
    nodes.push(
      await join(names.node(i), nodeAddress(i), { rate: n.upload, ...delay }, { rate: n.download, ...delay })
    )
  }
  return { names, registry, nodes, namespaces: () => [...made.filter((n) => n !== names.hub), names.hub] }
}
