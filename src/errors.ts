/**
 * Every failure Shoal reports has its own class with a stable `code`. Callers match on `code`
 * (or `name`), never on message text. `HTTP_STATUS` maps each code to the status the socket API
 * and the registry mirror answer with; the README lists every code.
 */

/** Base class of all typed Shoal errors. */
export class ShoalError extends Error {
  /** Stable machine-readable code, e.g. `DIGEST_MISMATCH`. */
  readonly code: string

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
    this.name = new.target.name
  }
}

function define<C extends string>(code: C, name: string) {
  const cls = class extends ShoalError {
    static readonly code: C = code
    constructor(message: string, options?: { cause?: unknown }) {
      super(code, message, options)
      this.name = name
    }
  }
  Object.defineProperty(cls, 'name', { value: name })
  return cls
}

/** An image reference (`registry/repo:tag@digest`) could not be parsed. */
export const InvalidReferenceError = define('INVALID_REFERENCE', 'InvalidReferenceError')
/** A digest string is not `algorithm:hex` with a supported algorithm and length. */
export const InvalidDigestError = define('INVALID_DIGEST', 'InvalidDigestError')
/** A manifest or index is not valid JSON or breaks the OCI / Docker schema. */
export const InvalidManifestError = define('INVALID_MANIFEST', 'InvalidManifestError')
/** A media type Shoal does not handle where one it handles is required. */
export const UnsupportedMediaTypeError = define('UNSUPPORTED_MEDIA_TYPE', 'UnsupportedMediaTypeError')
/** An image index has no manifest for the requested platform. */
export const NoMatchingPlatformError = define('NO_MATCHING_PLATFORM', 'NoMatchingPlatformError')
/** Bytes do not hash to the digest that names them (a piece or a whole blob). */
export const DigestMismatchError = define('DIGEST_MISMATCH', 'DigestMismatchError')
/** A source sent more or fewer bytes than the descriptor or range says. */
export const SizeMismatchError = define('SIZE_MISMATCH', 'SizeMismatchError')
/**
 * A peer asked for a private blob without a valid proof that it holds a manifest referencing it.
 * The server answers such a peer `BLOB_UNKNOWN` (it does not reveal that it holds the blob); this
 * code names the refusal in its own logs and metrics.
 */
export const AccessDeniedError = define('ACCESS_DENIED', 'AccessDeniedError')
/** A piece list is malformed or does not fit the blob it claims to describe. */
export const InvalidPieceListError = define('INVALID_PIECE_LIST', 'InvalidPieceListError')
/** The upstream registry refused our credentials (or we have none). */
export const UpstreamUnauthorizedError = define('UPSTREAM_UNAUTHORIZED', 'UpstreamUnauthorizedError')
/** The upstream registry (or layout) does not have the manifest or blob. */
export const UpstreamNotFoundError = define('UPSTREAM_NOT_FOUND', 'UpstreamNotFoundError')
/** The upstream answered 5xx, reset the connection or could not be reached. */
export const UpstreamUnavailableError = define('UPSTREAM_UNAVAILABLE', 'UpstreamUnavailableError')
/** The upstream did not answer in time. */
export const UpstreamTimeoutError = define('UPSTREAM_TIMEOUT', 'UpstreamTimeoutError')
/** The upstream answered 429 and retries ran out. */
export const UpstreamRateLimitedError = define('UPSTREAM_RATE_LIMITED', 'UpstreamRateLimitedError')
/** The upstream answered with something that is not a valid registry response. */
export const UpstreamProtocolError = define('UPSTREAM_PROTOCOL', 'UpstreamProtocolError')
/** The store does not hold the blob (or the bytes) asked for. */
export const BlobUnknownError = define('BLOB_UNKNOWN', 'BlobUnknownError')
/** A requested byte range lies outside the blob. */
export const RangeNotSatisfiableError = define('RANGE_NOT_SATISFIABLE', 'RangeNotSatisfiableError')
/** The quota cannot fit the blob even after evicting everything evictable. */
export const StoreFullError = define('STORE_FULL', 'StoreFullError')
/** The file system ran out of space (ENOSPC) while writing. */
export const DiskFullError = define('DISK_FULL', 'DiskFullError')
/** The store found data that contradicts its own index. */
export const StoreCorruptError = define('STORE_CORRUPT', 'StoreCorruptError')
/** The store was used before `start()` or after `stop()`. */
export const StoreClosedError = define('STORE_CLOSED', 'StoreClosedError')
/** The configuration (file, environment or flags) is invalid. */
export const ConfigInvalidError = define('CONFIG_INVALID', 'ConfigInvalidError')
/** A request to the socket API or the mirror is malformed. */
export const BadRequestError = define('BAD_REQUEST', 'BadRequestError')
/** No such route on the socket API or the mirror. */
export const NotFoundError = define('NOT_FOUND', 'NotFoundError')
/** The operation was aborted (client went away, agent shutting down). */
export const AbortedError = define('ABORTED', 'AbortedError')
/** Something failed that has no more specific code. */
export const InternalError = define('INTERNAL', 'InternalError')
/** A peer broke the piece protocol: malformed, unknown or oversized frame. */
export const ProtocolViolationError = define('PROTOCOL_VIOLATION', 'ProtocolViolationError')
/** The swarm key (the libp2p private-network pre-shared key) is missing or malformed. */
export const SwarmKeyInvalidError = define('SWARM_KEY_INVALID', 'SwarmKeyInvalidError')
/**
 * A layer tar cannot be extracted safely: an entry escapes the root (`..`, an absolute path, a
 * symlink in its parent chain, a hard link to outside or to nothing), has an absurd size, or
 * the archive or its compression is malformed.
 */
export const UnsafeLayerError = define('LAYER_UNSAFE', 'UnsafeLayerError')
/** A release names an image or layer this agent holds no materialization of. */
export const NotMaterializedError = define('NOT_MATERIALIZED', 'NotMaterializedError')
/**
 * The kernel has no device-mapper (no `device-mapper` line in /proc/misc): the `lvm-thin`
 * materializer cannot run, so an agent configured for it does not start.
 */
export const DeviceMapperMissingError = define('DEVICE_MAPPER_MISSING', 'DeviceMapperMissingError')
/**
 * A hyperlayer (block-level layer) is malformed: bad magic or version, a header that does not fit
 * the volume, an extent out of range or out of order, an oversized table, truncated or extra data.
 */
export const InvalidHyperlayerError = define('HYPERLAYER_INVALID', 'InvalidHyperlayerError')
/** A hyperlayer was made against other blocks than those of the volume it would apply on. */
export const HyperlayerParentMismatchError = define(
  'HYPERLAYER_PARENT_MISMATCH',
  'HyperlayerParentMismatchError'
)
/**
 * This node is draining (shutting down, or `shoal drain`): it opens no new piece sessions and
 * answers new ones with a `reject` of this code, so peers take the blob elsewhere.
 */
export const PeerDrainingError = define('PEER_DRAINING', 'PeerDrainingError')
/** A peer is uploading as many pieces as it allows (`swarm.concurrentUploads`): ask again soon. */
export const PieceBusyError = define('PIECE_BUSY', 'PieceBusyError')
/** An unpin names nothing that is pinned under that name. */
export const NotPinnedError = define('NOT_PINNED', 'NotPinnedError')
/** A simulation scenario file does not validate; the message names each bad field by its path. */
export const ScenarioInvalidError = define('SCENARIO_INVALID', 'ScenarioInvalidError')
/** `ip` or `tc` (iproute2) is not installed: the protocol-level simulator cannot build its network. */
export const IprouteMissingError = define('IPROUTE_MISSING', 'IprouteMissingError')
/** Creating network namespaces, links or qdiscs was refused: the simulator needs root (CAP_NET_ADMIN). */
export const NetnsPermissionError = define('NETNS_PERMISSION', 'NetnsPermissionError')
/** A link latency was asked for, but this kernel has no netem queueing discipline (sch_netem). */
export const NetemUnavailableError = define('NETEM_UNAVAILABLE', 'NetemUnavailableError')
/** An `ip` or `tc` command building or reading the simulated network failed for another reason. */
export const NetnsSetupError = define('NETNS_SETUP_FAILED', 'NetnsSetupError')
/** A protocol-level simulation did not finish within its time limit; everything it made is removed. */
export const SimulationTimeoutError = define('SIMULATION_TIMEOUT', 'SimulationTimeoutError')

/** Status code for each error code, used by the socket API and the mirror. */
export const HTTP_STATUS: Readonly<Record<string, number>> = {
  INVALID_REFERENCE: 400,
  INVALID_DIGEST: 400,
  INVALID_MANIFEST: 502,
  UNSUPPORTED_MEDIA_TYPE: 502,
  NO_MATCHING_PLATFORM: 404,
  DIGEST_MISMATCH: 502,
  SIZE_MISMATCH: 502,
  INVALID_PIECE_LIST: 502,
  ACCESS_DENIED: 403,
  UPSTREAM_UNAUTHORIZED: 502,
  UPSTREAM_NOT_FOUND: 404,
  UPSTREAM_UNAVAILABLE: 502,
  UPSTREAM_TIMEOUT: 504,
  UPSTREAM_RATE_LIMITED: 503,
  UPSTREAM_PROTOCOL: 502,
  BLOB_UNKNOWN: 404,
  RANGE_NOT_SATISFIABLE: 416,
  STORE_FULL: 507,
  DISK_FULL: 507,
  STORE_CORRUPT: 500,
  STORE_CLOSED: 503,
  CONFIG_INVALID: 500,
  BAD_REQUEST: 400,
  NOT_FOUND: 404,
  ABORTED: 499,
  INTERNAL: 500,
  PROTOCOL_VIOLATION: 502,
  SWARM_KEY_INVALID: 500,
  LAYER_UNSAFE: 502,
  NOT_MATERIALIZED: 404,
  DEVICE_MAPPER_MISSING: 500,
  HYPERLAYER_INVALID: 502,
  HYPERLAYER_PARENT_MISMATCH: 409,
  SCENARIO_INVALID: 400,
  PEER_DRAINING: 503,
  PIECE_BUSY: 503,
  NOT_PINNED: 404,
  IPROUTE_MISSING: 500,
  NETNS_PERMISSION: 500,
  NETEM_UNAVAILABLE: 500,
  NETNS_SETUP_FAILED: 500,
  SIMULATION_TIMEOUT: 504
}

/** Wraps anything thrown into a ShoalError (unknown failures become `INTERNAL`). */
export function toShoalError(err: unknown): ShoalError {
  if (err instanceof ShoalError) return err
  if (err instanceof Error && (err.name === 'AbortError' || err.name === 'TimeoutError')) {
    return new AbortedError(err.message, { cause: err })
  }
  return new InternalError(err instanceof Error ? err.message : String(err), { cause: err })
}

/** The HTTP status for an error (500 for anything untyped). */
export function httpStatusOf(err: unknown): number {
  return HTTP_STATUS[toShoalError(err).code] ?? 500
}
