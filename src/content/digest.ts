import { createHash, webcrypto } from 'node:crypto'
import { DigestMismatchError, InvalidDigestError } from '../errors.ts'

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/
// OCI allows other algorithms; Shoal verifies sha256 (the one every registry uses) and refuses
// the rest with a clear error rather than serving bytes it cannot check.
const ANY_DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/

/** True when `s` is a sha256 digest Shoal can verify. */
export function isDigest(s: string): boolean {
  return DIGEST_RE.test(s)
}

/** Validates a digest and returns it; throws `InvalidDigestError` with the reason. */
export function parseDigest(s: string): string {
  if (DIGEST_RE.test(s)) return s
  if (ANY_DIGEST_RE.test(s)) {
    throw new InvalidDigestError(`unsupported digest algorithm in "${clip(s)}": only sha256 is verified`)
  }
  throw new InvalidDigestError(`"${clip(s)}" is not a digest of the form sha256:<64 hex>`)
}

/** Lower-case hex sha256 of bytes. */
export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex')
}

/**
 * Lower-case hex sha256 of bytes, computed on libuv's thread pool (WebCrypto) so the event loop
 * stays free: used for pieces, where the main thread is busy with the whole-blob hash.
 */
export async function sha256HexAsync(data: Uint8Array): Promise<string> {
  return Buffer.from(await webcrypto.subtle.digest('SHA-256', data)).toString('hex')
}

/** `sha256:<hex>` of bytes. */
export function digestOf(data: Uint8Array): string {
  return `sha256:${sha256Hex(data)}`
}

/** The hex part of a sha256 digest. */
export function digestHex(digest: string): string {
  return parseDigest(digest).slice('sha256:'.length)
}

/** Throws `DigestMismatchError` unless `data` hashes to `digest`. */
export function verifyDigest(data: Uint8Array, digest: string, what = 'blob'): void {
  const actual = digestOf(data)
  if (actual !== digest) {
    throw new DigestMismatchError(`${what} ${digest} failed verification: bytes hash to ${actual}`)
  }
}

function clip(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s
}
