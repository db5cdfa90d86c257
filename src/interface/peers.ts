import type { AbortOptions } from './common.ts'

/** What a peer told us about one blob since the session opened. */
export type PeerEvent =
  /** The peer now holds piece `index` (its hash is `hashOf(index)`). */
  | { type: 'have'; index: number }
  /** The peer started fetching piece `index` from the registry. */
  | { type: 'fetching'; index: number }
  /** The session is over (the peer went away, failed, or was cut off). */
  | { type: 'closed' }
  /** Other peers on this blob, as the peer knows them (peer exchange): ids and addresses. */
  | { type: 'peers'; peers: { peerId: string; addresses: string[] }[] }

/**
 * A conversation with one peer about one blob it holds, whole or in part. Every hash it knows
 * came from that peer (its piece list, or the HAVEs of a blob it is still fetching): a piece
 * fetched from it is checked against that hash, and the peer is what vouched for it.
 */
export interface PeerBlobSession {
  readonly peerId: string
  /** The blob's size and piece size as the peer declared them. */
  readonly size: number
  readonly pieceSize: number
  /** False once the session has closed or failed. */
  readonly open: boolean
  /** Pieces the peer holds. */
  readonly held: number
  /** True when the peer holds piece `index`. */
  has(index: number): boolean
  /** The hash the peer vouches for piece `index`, when it holds it. */
  hashOf(index: number): string | undefined
  /** When (ms, the session's clock) the peer said it was fetching `index` and has not had it since. */
  fetchingSince(index: number): number | undefined
  /**
   * One piece, checked against `hashOf(index)` (a bad piece throws `DigestMismatchError` and
   * closes the session).
   */
  fetchPiece(index: number, options?: AbortOptions & { timeoutMs?: number }): Promise<Uint8Array>
  /** Listens to the peer's news; returns the function that stops listening. */
  onEvent(fn: (event: PeerEvent) => void): () => void
  close(): Promise<void>
}

/** A blob this node is fetching, as peers may see it while it is still incomplete. */
export interface LiveBlob {
  readonly digest: string
  readonly size: number
  readonly pieceSize: number
  /** The hash of piece `index` when it is held (verified and durable). */
  hashOf(index: number): string | undefined
  /** Pieces held, with their hashes. */
  held(): Iterable<[index: number, sha256: string]>
  /** Pieces being fetched from the registry now. */
  fetching(): Iterable<number>
  /** Listens to progress; returns the function that stops listening. */
  onEvent(fn: (event: LiveBlobEvent) => void): () => void
}

export type LiveBlobEvent =
  | { type: 'have'; index: number; sha256: string }
  | { type: 'fetching'; index: number }
  /** The transfer is over: complete (the store serves it from now on) or failed (forget it). */
  | { type: 'ended'; complete: boolean }

/** The geometry peers use for a blob. */
export interface BlobGeometry {
  size: number
  pieceSize: number
}

/** The swarm of one blob as the fetcher sees it: sessions with peers come and go. */
export interface BlobPeers {
  /** This node's peer id (ties between peers fetching the same piece go to the lower id). */
  readonly localPeerId: string
  /**
   * Waits for the first round of discovery: the geometry the first peer that answered uses, or
   * undefined when none did (this node then chooses it).
   */
  ready(options?: AbortOptions): Promise<BlobGeometry | undefined>
  /** Open sessions now. */
  sessions(): PeerBlobSession[]
  /**
   * Ids of the peers known to be on this blob, with a session or not yet (heard of through peer
   * exchange or because they asked us): those that share the registry's work.
   */
  swarmMembers?(): string[]
  /** Called when a session opens or closes, or a peer reports a piece. */
  onChange(fn: () => void): () => void
  /** Lets peers fetch from this node's transfer while it runs. */
  publish(blob: LiveBlob): void
  /** Cuts a peer off and keeps it out of the swarm for a while. */
  ban(peerId: string, reason: string): void
  /** Stops finding peers and closes sessions; a complete blob stays advertised. */
  leave(complete: boolean): void
}

/** How a fetch shows peers it may have a blob, and how private the blob is on this node. */
export interface JoinOptions {
  /** The blob's size when known (from its descriptor). */
  size?: number
  /**
   * The access key of the manifest the blob was requested through (content/access.ts): sessions
   * carry a proof made with it, and a private blob's holders are found under a key derived from it.
   */
  accessKey?: Uint8Array | undefined
  /** The blob is private on this node: never advertised under its digest. */
  private?: boolean
}

/** What `announce` needs to know of a blob's access (see `BlobAccess` in store.ts). */
export interface AnnounceOptions {
  private?: boolean
  /** Access keys of manifests referencing a private blob: it is advertised under keys derived from them. */
  keys?: readonly Uint8Array[]
}

/**
 * Where the fetcher finds peers (implemented over the swarm: DHT providers plus the piece
 * protocol). The fetcher never knows more than this.
 */
export interface PeerSource {
  /** Joins the swarm of a blob: advertises it at once and looks for peers that hold it (undefined while the swarm is down). */
  join(digest: string, options?: JoinOptions): BlobPeers | undefined
  /**
   * Tells the swarm this node holds the blob (complete and verified), e.g. after a restart. A
   * private blob is advertised only under keys derived from its manifests' access keys.
   */
  announce(digest: string, options?: AnnounceOptions): void
  /** Stops announcing a blob this node no longer holds. */
  withdraw(digest: string): void
}
