import type { PieceList } from '../content/piece-list.ts'
import type { AbortOptions } from './common.ts'

/** A conversation with one peer about one blob it holds. */
export interface PeerBlobSession {
  readonly peerId: string
  /** The peer's piece list: checked against the blob digest only when the whole blob is in. */
  readonly pieceList: PieceList
  /** One piece, verified against the piece list (a bad piece throws `DigestMismatchError`). */
  fetchPiece(index: number, options?: AbortOptions): Promise<Uint8Array>
  close(): Promise<void>
}

/**
 * Where the fetcher finds peers that hold a blob (implemented over the swarm: DHT providers
 * plus the piece protocol). The fetcher never knows more than this.
 */
export interface PeerSource {
  /** A session with a peer that holds the blob, or undefined when none answers in time. */
  open(digest: string, options?: AbortOptions & { size?: number }): Promise<PeerBlobSession | undefined>
  /** Tells the swarm this node now holds the blob (complete and verified). */
  announce(digest: string): void
  /** Stops announcing a blob this node no longer holds. */
  withdraw(digest: string): void
}
