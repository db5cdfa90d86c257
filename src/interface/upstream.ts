import type { AbortOptions, ByteRange } from './common.ts'

/** A manifest (or index) as the upstream returned it: exact bytes and exact media type. */
export interface ManifestResponse {
  /** `sha256:...` of `bytes` (checked against Docker-Content-Digest when the upstream sends one). */
  digest: string
  /** The upstream's Content-Type, kept verbatim. */
  mediaType: string
  size: number
  bytes: Uint8Array
}

/** What a HEAD on a manifest tells: no body. */
export interface ManifestHead {
  digest: string
  mediaType: string
  size: number
}

export interface ManifestRequestOptions extends AbortOptions {
  /** Media types the client accepts, forwarded verbatim as `Accept`. */
  accept?: string[]
}

export interface FetchBlobOptions extends AbortOptions {
  /** Fetch only these bytes (HTTP Range). Without it the whole blob. */
  range?: ByteRange
  /**
   * Read the bytes into this buffer (at least as long as the range) instead of a new one; the
   * result is then a view of it. Lets the fetcher reuse a few piece buffers for a whole pull.
   */
  into?: Uint8Array
}

/**
 * A seed: where images originally come from and the root of trust for tags. Implemented by
 * `RegistryUpstream` (an OCI distribution registry over HTTP) and `OciLayoutUpstream`
 * (an OCI image layout directory, for air-gapped seeding).
 */
export interface Upstream {
  /** `registry` or `oci-layout`: bytes from it are accounted under this name. */
  readonly kind: 'registry' | 'oci-layout'
  /** The registry host (or layout name) this upstream serves, e.g. `docker.io`. */
  readonly name: string
  /**
   * True when requests to it carry credentials configured for it (basic, a static token, or
   * bearer tokens obtained with them): what it serves may be private, and blobs from it are
   * served to peers only against a proof of access (docs/decisions/0011-private-blobs.md).
   */
  readonly credentialed?: boolean
  /** GET a manifest or index by tag or digest. Verifies the bytes when `reference` is a digest. */
  getManifest(
    repository: string,
    reference: string,
    options?: ManifestRequestOptions
  ): Promise<ManifestResponse>
  /** HEAD a manifest: its digest, media type and size. */
  headManifest(repository: string, reference: string, options?: ManifestRequestOptions): Promise<ManifestHead>
  /** The size of a blob (HEAD). */
  statBlob(repository: string, digest: string, options?: AbortOptions): Promise<{ size: number }>
  /**
   * Fetch a blob or a range of it into memory. Checks that exactly the asked-for number of bytes
   * arrived; does NOT check the digest (the caller verifies pieces and blobs).
   */
  fetchBlob(repository: string, digest: string, options?: FetchBlobOptions): Promise<Uint8Array>
}

/** Maps a registry host (as in an image reference or containerd's `?ns=`) to its upstream. */
export interface UpstreamResolver {
  resolve(registry: string): Upstream
}
