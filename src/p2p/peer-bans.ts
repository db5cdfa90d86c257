/**
 * Peers this node refuses to deal with, each until a deadline: a peer that sent a piece failing
 * its hash, or that vouched for a piece that turned out forged. A ban cuts every session with the
 * peer (listeners do the cutting) and keeps new ones from opening, in both directions.
 */
export class PeerBans {
  readonly #until = new Map<string, number>()
  readonly #listeners = new Set<(peerId: string, reason: string) => void>()
  readonly #now: () => number

  constructor(now: () => number = Date.now) {
    this.#now = now
  }

  /** Bans `peerId` for `ms` (a longer existing ban stays). */
  ban(peerId: string, reason: string, ms: number): void {
    const until = this.#now() + ms
    if ((this.#until.get(peerId) ?? 0) < until) this.#until.set(peerId, until)
    for (const fn of this.#listeners) fn(peerId, reason)
  }

  isBanned(peerId: string): boolean {
    const until = this.#until.get(peerId)
    if (until === undefined) return false
    if (until > this.#now()) return true
    this.#until.delete(peerId)
    return false
  }

  /** Peers banned now. */
  get active(): number {
    let n = 0
    for (const id of [...this.#until.keys()]) if (this.isBanned(id)) n++
    return n
  }

  onBan(fn: (peerId: string, reason: string) => void): () => void {
    this.#listeners.add(fn)
    return () => this.#listeners.delete(fn)
  }
}
