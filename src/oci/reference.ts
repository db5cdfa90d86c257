import { parseDigest } from '../content/digest.ts'
import { InvalidReferenceError } from '../errors.ts'

/** A parsed image reference, normalised the way containerd and docker do. */
export interface ImageReference {
  /** Registry host as in the reference (`docker.io` for Docker Hub). */
  registry: string
  /** Repository path; `library/` prefixed for official Docker Hub images. */
  repository: string
  tag?: string
  digest?: string
}

export const DOCKER_HUB = 'docker.io'
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io'])

// The grammar of distribution/reference: path components are lower-case alphanumerics joined
// by separators; a tag is up to 128 word characters, dots and dashes.
const COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/
const TAG_RE = /^\w[\w.-]{0,127}$/
const HOST_RE =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$/
const MAX_NAME_LENGTH = 255

/**
 * Parses `[registry/]repository[:tag][@digest]`. The first path component is a registry when it
 * contains a `.` or `:` or is `localhost` (the docker rule); otherwise the registry is Docker Hub,
 * and a single-component Hub repository gets `library/`. Throws `InvalidReferenceError`.
 */
export function parseReference(input: string): ImageReference {
  if (typeof input !== 'string' || input.length === 0) {
    throw new InvalidReferenceError('image reference is empty')
  }
  if (input.length > 512 || /\s/.test(input)) {
    throw new InvalidReferenceError(`"${clip(input)}" is not an image reference`)
  }
  let rest = input
  let digest: string | undefined
  const at = rest.indexOf('@')
  if (at >= 0) {
    try {
      digest = parseDigest(rest.slice(at + 1))
    } catch (err) {
      throw new InvalidReferenceError(`"${clip(input)}" has an invalid digest: ${(err as Error).message}`)
    }
    rest = rest.slice(0, at)
  }
  let tag: string | undefined
  const colon = rest.lastIndexOf(':')
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    if (!TAG_RE.test(tag)) throw new InvalidReferenceError(`"${clip(input)}" has an invalid tag "${tag}"`)
  }
  const parts = rest.split('/')
  let registry = DOCKER_HUB
  const first = parts[0] ?? ''
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    if (!HOST_RE.test(first))
      throw new InvalidReferenceError(`"${clip(input)}" has an invalid registry "${first}"`)
    registry = DOCKER_HUB_ALIASES.has(first) ? DOCKER_HUB : first
    parts.shift()
  }
  if (parts.length === 0 || parts.some((p) => !COMPONENT_RE.test(p))) {
    throw new InvalidReferenceError(
      `"${clip(input)}" has an invalid repository: use lower-case letters, digits and separators`
    )
  }
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library')
  const repository = parts.join('/')
  if (repository.length > MAX_NAME_LENGTH) {
    throw new InvalidReferenceError(`"${clip(input)}" has a repository longer than ${MAX_NAME_LENGTH}`)
  }
  if (tag === undefined && digest === undefined) tag = 'latest'
  return { registry, repository, ...(tag !== undefined && { tag }), ...(digest !== undefined && { digest }) }
}

/**
 * A registry host as references name it (`host[:port]`, `[v6]:port`); throws
 * `InvalidReferenceError` for anything else, such as a path, credentials or spaces.
 */
export function parseRegistryHost(host: string): string {
  if (host.length > MAX_NAME_LENGTH || !HOST_RE.test(host)) {
    throw new InvalidReferenceError(`"${clip(host)}" is not a registry host`)
  }
  return host
}

/**
 * What follows a repository in a manifest request: a tag, or a digest (`INVALID_DIGEST` when
 * malformed). Throws `InvalidReferenceError` for anything else.
 */
export function parseTagOrDigest(reference: string): string {
  if (reference.includes(':')) return parseDigest(reference)
  if (!TAG_RE.test(reference)) throw new InvalidReferenceError(`"${clip(reference)}" is not a tag or digest`)
  return reference
}

/** `registry/repository[:tag][@digest]`, the fully qualified form. */
export function formatReference(ref: ImageReference): string {
  let s = `${ref.registry}/${ref.repository}`
  if (ref.tag) s += `:${ref.tag}`
  if (ref.digest) s += `@${ref.digest}`
  return s
}

/** True when `host` names Docker Hub under any of its aliases. */
export function isDockerHub(host: string): boolean {
  return DOCKER_HUB_ALIASES.has(host)
}

function clip(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s
}
