/**
 * What a simulation records over time, for the plots and the result file. The model and the
 * protocol-level runner both fill it, so one set of plots draws either.
 */

/** Samples of the swarm's state, one entry per sample time, in time order. */
export interface SwarmTimeline {
  /** Sample times, seconds from the start. */
  t: number[]
  /** Nodes that hold the whole image at each sample. */
  completed: number[]
  /** Bytes the registry has sent so far (cumulative) at each sample. */
  registryBytes: number[]
  /**
   * The replica count of the rarest piece among the nodes (the registry not counted) at each
   * sample: 0 while some piece is only at the registry.
   */
  minReplicas: number[]
}

/** Messages each node sent, by kind (one entry per node). */
export interface MessageCounts {
  /** DHT messages (provide and find, counting every hop). */
  dht: number[]
  /** Control messages on piece sessions: HAVE, fetching claims, requests, peer lists. */
  control: number[]
}

/** Collects timeline samples, keeping at most about `maxSamples` by halving when full. */
export class TimelineRecorder {
  readonly timeline: SwarmTimeline = { t: [], completed: [], registryBytes: [], minReplicas: [] }
  #every: number
  #next = 0

  /** `every`: the first spacing between samples (seconds); it doubles when the buffer fills. */
  constructor(
    every: number,
    readonly maxSamples = 400
  ) {
    this.#every = every
  }

  /** Records a sample at `t` if one is due (always records when `force`). */
  sample(t: number, completed: number, registryBytes: number, minReplicas: number, force = false): void {
    if (!force && t < this.#next) return
    const tl = this.timeline
    tl.t.push(t)
    tl.completed.push(completed)
    tl.registryBytes.push(registryBytes)
    tl.minReplicas.push(minReplicas)
    this.#next = t + this.#every
    if (tl.t.length >= this.maxSamples) this.#halve()
  }

  #halve(): void {
    const tl = this.timeline
    const keep = (xs: number[]): number[] => xs.filter((_, i) => i % 2 === 0 || i === xs.length - 1)
    tl.t = keep(tl.t)
    tl.completed = keep(tl.completed)
    tl.registryBytes = keep(tl.registryBytes)
    tl.minReplicas = keep(tl.minReplicas)
    this.#every *= 2
  }
}
