/**
 * Which piece to ask for next, and from whom: pure functions over what the transfer holds, what
 * is in flight, and what each peer holds or is fetching. Kept apart from the transfer so the
 * policy can be read (and tested) on its own:
 *
 * - from a peer: a piece it holds that we lack and nobody is bringing in; the first piece at
 *   random (so a crowd does not all want the same one), then the rarest among the peers (so
 *   every piece keeps a copy somewhere); pieces a range read waits for come first. At the tail
 *   (endgame) a piece already in flight from another source may be asked for again.
 * - from the registry: a piece no peer holds and none is fetching (a fresh `fetching` claim
 *   counts), and that this node owns among the peers it knows on the blob (rendezvous hashing,
 *   so nodes with the same view split the blob before any claim arrives), in order from a random
 *   start: the registry sends each piece about once. Pieces a range read waits for come first.
 *   When the swarm has made no progress for a while (its patience), any piece not in flight and
 *   not freshly claimed may go to the registry.
 */

/** What a peer session offers, as the picker needs it. */
export interface PeerView {
  readonly peerId: string
  has(index: number): boolean
  fetchingSince(index: number): number | undefined
  /**
   * The pieces the peer offers, when it keeps them as a list: the picker then walks whichever
   * is shorter, this or the missing pieces (early in a crowd peers offer few of many).
   */
  readonly offeredList?: readonly number[]
}

/** The transfer's state, as the picker needs it. */
export interface PickState {
  /** Pieces not yet held, in index order. */
  missing: ReadonlySet<number>
  /** Sources (peer ids or `registry`) each piece in flight is coming from. */
  inFlight: ReadonlyMap<number, readonly string[]>
  /** Pieces a range read waits for, most urgent first. */
  priority: readonly number[]
  /** Pieces held so far. */
  heldCount: number
  count: number
  /** Open sessions with peers, in the blob's geometry. */
  peers: readonly PeerView[]
  /** Now (ms, the same clock as `fetchingSince`). */
  now: number
  /** How long a peer's `fetching` claim holds other nodes off the piece. */
  claimTtlMs: number
  /** True when the swarm has stalled: the registry may take any piece not in flight. */
  impatient: boolean
  /** Where the registry's walk through the blob starts (random per node). */
  registryStart: number
  /**
   * True for the pieces this node is the one to take from the registry among the peers it knows
   * on the blob (rendezvous hashing); absent, every piece is. Ignored when impatient.
   */
  owns?: (index: number) => boolean
  /** How many peers offer piece `index`, when the caller keeps count; absent, counted here. */
  availability?: (index: number) => number
  random: () => number
}

/** At most this many missing pieces make the endgame (duplicate requests allowed). */
export const ENDGAME_PIECES = 4

/** The next piece to ask `peer` for, or undefined. */
export function pickForPeer(peer: PeerView, s: PickState): number | undefined {
  for (const i of s.priority) {
    if (s.missing.has(i) && !s.inFlight.has(i) && peer.has(i)) return i
  }
  const candidates: number[] = []
  const offered = peer.offeredList
  if (offered !== undefined && offered.length < s.missing.size) {
    for (const i of offered) if (s.missing.has(i) && !s.inFlight.has(i)) candidates.push(i)
    // In index order, as the missing pieces are kept: the same pick either way.
    candidates.sort((x, y) => x - y)
  } else for (const i of s.missing) if (!s.inFlight.has(i) && peer.has(i)) candidates.push(i)
  if (candidates.length === 0) return endgamePick(peer, s)
  if (s.heldCount === 0) return candidates[Math.floor(s.random() * candidates.length)]
  let best: number[] = []
  let bestCount = Number.POSITIVE_INFINITY
  for (const i of candidates) {
    let n = 0
    if (s.availability !== undefined) n = s.availability(i)
    else for (const p of s.peers) if (p.has(i)) n++
    if (n < bestCount) {
      bestCount = n
      best = [i]
    } else if (n === bestCount) {
      best.push(i)
    }
  }
  return best[Math.floor(s.random() * best.length)]
}

/**
 * True when `pickForPeer(peer, s)` would pick a piece: whether a busy peer holds anything this
 * node would ask it for, without ranking the pieces.
 */
export function wantsFrom(peer: PeerView, s: PickState): boolean {
  const offered = peer.offeredList
  if (offered !== undefined && offered.length < s.missing.size) {
    for (const i of offered) if (s.missing.has(i) && !s.inFlight.has(i)) return true
  } else for (const i of s.missing) if (!s.inFlight.has(i) && peer.has(i)) return true
  return endgamePick(peer, s) !== undefined
}

function endgamePick(peer: PeerView, s: PickState): number | undefined {
  if (s.missing.size > ENDGAME_PIECES) return undefined
  for (const i of s.missing) {
    const from = s.inFlight.get(i)
    if (from !== undefined && from.length < 2 && !from.includes(peer.peerId) && peer.has(i)) return i
  }
  return undefined
}

/** The next piece to fetch from the registry, or undefined. */
export function pickForRegistry(s: PickState): number | undefined {
  for (const i of s.priority) if (s.missing.has(i) && !s.inFlight.has(i)) return i
  let best: number | undefined
  let bestRank = Number.POSITIVE_INFINITY
  for (const i of s.missing) {
    if (s.inFlight.has(i)) continue
    if (!s.impatient && s.owns !== undefined && !s.owns(i)) continue
    // A fresh claim holds even an impatient node off: the claimer renews it while its request
    // is alive, and a second request would only split the registry's bandwidth.
    if (claimedFresh(i, s)) continue
    if (!s.impatient && heldByPeer(i, s)) continue
    const rank = (i - s.registryStart + s.count) % s.count
    if (rank < bestRank) {
      bestRank = rank
      best = i
    }
  }
  return best
}

/** True when a peer holds piece `i`. */
function heldByPeer(i: number, s: PickState): boolean {
  for (const p of s.peers) if (p.has(i)) return true
  return false
}

/** True when a peer has a fresh claim on piece `i`. */
function claimedFresh(i: number, s: PickState): boolean {
  for (const p of s.peers) {
    const since = p.fetchingSince(i)
    if (since !== undefined && s.now - since < s.claimTtlMs) return true
  }
  return false
}
