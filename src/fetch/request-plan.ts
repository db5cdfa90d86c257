/**
 * One scheduling pass of a blob transfer, as a pure function: which pieces to ask of which
 * peer, and which to take from the registry, given what is held, what is in flight and what the
 * peers offer. The transfer (`transfer.ts`) runs it on every change and launches the requests;
 * the model simulator (`src/sim/swarm-model.ts`) runs the very same pass under a virtual clock.
 *
 * - Peers first, in the order given (the caller shuffles): up to `peerDepth` requests per peer
 *   and `maxPeerFlights` to all peers together, each piece chosen by `pickForPeer`. A peer that
 *   takes no more requests now (`capacity`: it said it is busy) is reported in `blocked` when
 *   it holds a piece this node would have asked it for.
 * - Then the registry, up to `registryWindow` requests in flight, each piece chosen by
 *   `pickForRegistry` among the pieces this node owns (see `assignRegistryPieces`), or, for a
 *   node with nothing to ask of any peer when `starvingTakesAny`, among all pieces.
 */
import { type PeerView, type PickState, pickForPeer, pickForRegistry, wantsFrom } from './piece-picker.ts'

export interface RequestPlanInput<P extends PeerView> {
  /** The picker's state; `inFlight` is copied, not changed. */
  state: PickState
  /** Peers of the blob, in the order to ask them. */
  sessions: readonly P[]
  /** Requests in flight to each peer. */
  peerLoad: (peer: P) => number
  /** How many more requests a peer takes now (0: it said it is busy). Default: no limit. */
  capacity?: (peer: P) => number
  peerDepth: number
  maxPeerFlights: number
  /** Requests in flight to all peers, when `sessions` is not every peer. Default: their sum. */
  peerFlights?: number
  /** Requests in flight to the registry now, and how many it may have. */
  registryLoad: number
  registryWindow: number
  /**
   * The pieces this node takes from the registry (see `assignRegistryPieces`), asked for only
   * when the registry has room; absent, any piece.
   */
  owns?: () => ((index: number) => boolean) | undefined
  /**
   * When true, a node with no request to any peer after the peer pass (starving) may take any
   * piece nobody holds or claims, owned or not. The agent does; a large crowd should not.
   */
  starvingTakesAny: boolean
}

export interface RequestPlan<P extends PeerView> {
  /** Requests to launch, in order: `peer` undefined means the registry. */
  requests: Array<{ index: number; peer: P | undefined }>
  /** Peers skipped because they could not take a request, though they hold a piece wanted. */
  blocked: P[]
  /** Peers that hold nothing this node would ask them for now. */
  idle: P[]
}

/** One scheduling pass: the requests to launch now. */
export function planRequests<P extends PeerView>(input: RequestPlanInput<P>): RequestPlan<P> {
  const { sessions, peerDepth, maxPeerFlights } = input
  const state: PickState = { ...input.state }
  let inFlight: Map<number, readonly string[]> | undefined
  const requests: RequestPlan<P>['requests'] = []
  const blocked: P[] = []
  const idle: P[] = []
  const take = (index: number, peer: P | undefined): void => {
    requests.push({ index, peer })
    // Copied on the first request only: most passes launch nothing.
    inFlight ??= new Map(input.state.inFlight)
    inFlight.set(index, [...(inFlight.get(index) ?? []), peer?.peerId ?? 'registry'])
    state.inFlight = inFlight
  }
  let peerFlights = input.peerFlights ?? 0
  if (input.peerFlights === undefined) for (const s of sessions) peerFlights += input.peerLoad(s)
  for (const s of sessions) {
    if (peerFlights >= maxPeerFlights) break
    const room = input.capacity?.(s) ?? Number.POSITIVE_INFINITY
    let asked = 0
    for (let load = input.peerLoad(s); load < peerDepth && peerFlights < maxPeerFlights; load++) {
      if (asked >= room) {
        if (wantsFrom(s, state)) blocked.push(s)
        else idle.push(s)
        break
      }
      const i = pickForPeer(s, state)
      if (i === undefined) {
        if (asked === 0) idle.push(s)
        break
      }
      take(i, s)
      asked++
      peerFlights++
    }
  }
  if (input.registryLoad >= input.registryWindow) return { requests, blocked, idle }
  // Patience is for a stalled swarm: while a peer is taking pieces from the registry (a fresh
  // claim), the registry is busy, not stalled, and more requests would only split it.
  if (state.impatient && anyFreshClaim(state)) state.impatient = false
  let busy = false
  for (const s of sessions) if (input.peerLoad(s) > 0) busy = true
  if (requests.length > 0) busy = true
  if (busy || !input.starvingTakesAny) {
    const owns = input.owns?.()
    if (owns !== undefined) state.owns = owns
  }
  for (let load = input.registryLoad; load < input.registryWindow; load++) {
    const i = pickForRegistry(state)
    if (i === undefined) break
    take(i, undefined)
  }
  return { requests, blocked, idle }
}

/** True when some peer holds a fresh claim on some piece. */
function anyFreshClaim(s: PickState): boolean {
  for (const p of s.peers) {
    for (let i = 0; i < s.count; i++) {
      const since = p.fetchingSince(i)
      if (since !== undefined && s.now - since < s.claimTtlMs) return true
    }
  }
  return false
}

/**
 * Which member takes each piece from the registry: the `fetchers` members ranked highest for
 * the blob (`blobScore`, e.g. a hash of the blob and the member's id), and among them, for each
 * piece, the one ranked highest for that piece (`pieceScore`): rendezvous hashing twice. Every
 * node that knows the same members splits the blob the same way, and only a few nodes talk to
 * the registry however big the crowd: their requests overlap less, and each piece leaves the
 * registry sooner. Returns the owner of each piece.
 */
export function assignRegistryPieces<M, S extends number | string>(
  members: readonly M[],
  count: number,
  fetchers: number,
  blobScore: (m: M) => S,
  pieceScore: (m: M, piece: number) => S
): M[] {
  const ranked = members.map((m) => ({ m, s: blobScore(m) }))
  ranked.sort((a, b) => (a.s > b.s ? -1 : a.s < b.s ? 1 : 0))
  const chosen = ranked.slice(0, Math.max(1, fetchers)).map((r) => r.m)
  const owner: M[] = []
  for (let i = 0; i < count; i++) {
    let best = chosen[0] as M
    let bestScore: S | undefined
    for (const m of chosen) {
      const s = pieceScore(m, i)
      if (bestScore === undefined || s > bestScore) {
        bestScore = s
        best = m
      }
    }
    owner.push(best)
  }
  return owner
}
