/**
 * Proof of access to private blobs (docs/decisions/0011-private-blobs.md). Only a node that could
 * read a manifest holds its bytes, so the bytes are the secret: a manifest's access key is an
 * HMAC keyed by them, and a peer shows it may have a blob by an HMAC, under the key of a manifest
 * that references the blob, over the blob's digest and both peer ids. Digests alone prove nothing:
 * they leak in logs, tags and CI output.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'
import { ProtocolViolationError } from '../errors.ts'
import { digestHex } from './digest.ts'

/** Bytes of an access key and of a proof (HMAC-SHA256 outputs). */
export const ACCESS_KEY_BYTES = 32
export const ACCESS_PROOF_BYTES = 32
/** Access keys a node keeps per blob (manifests seen that reference it), newest kept. */
export const MAX_ACCESS_KEYS = 32

const KEY_LABEL = 'shoal-access-v1'
const PROOF_LABEL = 'shoal-proof-v1'
const RENDEZVOUS_LABEL = 'shoal-rendezvous-v1'
// Peer ids in a proof are length-prefixed with one byte; base58 ids are far shorter.
const MAX_PEER_ID_LENGTH = 255

/** The access key of a manifest: HMAC-SHA256(key = its exact bytes, message = "shoal-access-v1"). */
export function accessKey(manifestBytes: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac('sha256', manifestBytes).update(KEY_LABEL).digest())
}

/**
 * What a client sends in its `hello` to show it holds a manifest referencing `digest`:
 * HMAC-SHA256(access key, "shoal-proof-v1" || digest (32 raw bytes) || len || client peer id ||
 * len || server peer id). Peer ids are those Noise authenticated, so a proof is good for one
 * client talking to one server, and a server that heard it cannot replay it to another.
 */
export function accessProof(
  key: Uint8Array,
  digest: string,
  clientPeerId: string,
  serverPeerId: string
): Uint8Array {
  if (key.length !== ACCESS_KEY_BYTES)
    throw new ProtocolViolationError(`an access key of ${key.length} bytes`)
  const hmac = createHmac('sha256', key)
  hmac.update(PROOF_LABEL)
  hmac.update(Buffer.from(digestHex(digest), 'hex'))
  for (const id of [clientPeerId, serverPeerId]) {
    const bytes = Buffer.from(id, 'utf8')
    if (bytes.length === 0 || bytes.length > MAX_PEER_ID_LENGTH) {
      throw new ProtocolViolationError(`a peer id of ${bytes.length} bytes in an access proof`)
    }
    hmac.update(Uint8Array.of(bytes.length))
    hmac.update(bytes)
  }
  return new Uint8Array(hmac.digest())
}

/**
 * True when `proof` was made with one of `keys` for this blob, client and server. Every key is
 * tried, each compared in constant time, so the answer takes as long whichever key matches.
 */
export function verifyAccessProof(
  keys: Iterable<Uint8Array>,
  proof: Uint8Array | undefined,
  digest: string,
  clientPeerId: string,
  serverPeerId: string
): boolean {
  if (proof === undefined || proof.length !== ACCESS_PROOF_BYTES) return false
  let ok = false
  for (const key of keys) {
    if (key.length !== ACCESS_KEY_BYTES) continue
    const expected = accessProof(key, digest, clientPeerId, serverPeerId)
    if (timingSafeEqual(expected, proof)) ok = true
  }
  return ok
}

/**
 * The DHT key under which holders of a private blob, reached through one manifest, find each
 * other: `sha256:` HMAC-SHA256(access key, "shoal-rendezvous-v1" || digest). Only nodes with the
 * manifest can compute it, so the DHT does not tell anyone else who holds the blob.
 */
export function rendezvousDigest(key: Uint8Array, digest: string): string {
  const mac = createHmac('sha256', key)
    .update(RENDEZVOUS_LABEL)
    .update(Buffer.from(digestHex(digest), 'hex'))
    .digest('hex')
  return `sha256:${mac}`
}
