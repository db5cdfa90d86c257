import { z } from 'zod'
import { MAX_BLOB_SIZE, MAX_MANIFEST_SIZE } from '../constants.ts'
import { isDigest } from '../content/digest.ts'
import { InvalidManifestError, UnsupportedMediaTypeError } from '../errors.ts'
import {
  baseMediaType,
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
  DOCKER_SCHEMA1,
  INDEX_TYPES,
  MANIFEST_TYPES,
  OCI_INDEX,
  OCI_MANIFEST
} from './media-types.ts'

/** A content descriptor: what a manifest says about a blob it references. */
export interface Descriptor {
  mediaType: string
  digest: string
  size: number
}

export interface PlatformSpec {
  os: string
  architecture: string
  variant?: string
}

/** An index entry: a manifest and, usually, the platform it is for. */
export interface IndexEntry extends Descriptor {
  platform?: PlatformSpec
}

export type ParsedManifest =
  | { kind: 'manifest'; mediaType: string; config: Descriptor; layers: Descriptor[] }
  | { kind: 'index'; mediaType: string; manifests: IndexEntry[] }

const descriptor = z.object({
  mediaType: z.string().min(1),
  digest: z.string().refine(isDigest, 'must be sha256:<64 hex>'),
  size: z.number().int().min(0).max(MAX_BLOB_SIZE)
})

/**
 * Most layers a manifest may list: overlayfs stacks at most 500 lower directories
 * (OVL_MAX_STACK), so no runtime mounts more. A manifest listing thousands of blobs that do not
 * exist would otherwise keep a node busy starting as many transfers.
 */
export const MAX_MANIFEST_LAYERS = 500

const manifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: descriptor,
  layers: z.array(descriptor).max(MAX_MANIFEST_LAYERS, `at most ${MAX_MANIFEST_LAYERS} layers`)
})

const indexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(
    descriptor.extend({
      platform: z
        .object({ os: z.string(), architecture: z.string(), variant: z.string().optional() })
        .optional()
    })
  )
})

/**
 * Parses an OCI or Docker schema 2 manifest or index. The kind comes from `contentType` when it
 * names one, else from the JSON's `mediaType`, else from its shape (OCI layouts written by some
 * tools omit `mediaType`). Schema 1 is refused with `UnsupportedMediaTypeError`; anything
 * malformed with `InvalidManifestError` naming the first problem.
 */
export function parseManifest(bytes: Uint8Array, contentType?: string): ParsedManifest {
  if (bytes.byteLength > MAX_MANIFEST_SIZE) {
    throw new InvalidManifestError(
      `manifest of ${bytes.byteLength} bytes exceeds the ${MAX_MANIFEST_SIZE} limit`
    )
  }
  let json: unknown
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch (err) {
    throw new InvalidManifestError(`manifest is not valid JSON: ${(err as Error).message}`)
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new InvalidManifestError('manifest is not a JSON object')
  }
  const obj = json as Record<string, unknown>
  const declared = typeof obj.mediaType === 'string' ? baseMediaType(obj.mediaType) : undefined
  const header = contentType ? baseMediaType(contentType) : undefined
  const type = [header, declared].find(
    (t) =>
      t !== undefined && (MANIFEST_TYPES.includes(t) || INDEX_TYPES.includes(t) || DOCKER_SCHEMA1.includes(t))
  )
  if ((type && DOCKER_SCHEMA1.includes(type)) || obj.schemaVersion === 1) {
    throw new UnsupportedMediaTypeError(
      'Docker schema 1 manifests are not supported; push the image as schema 2 or OCI'
    )
  }
  const isIndex = type ? INDEX_TYPES.includes(type) : Array.isArray(obj.manifests) && !('layers' in obj)
  if (isIndex) {
    const r = indexSchema.safeParse(obj)
    if (!r.success) throw new InvalidManifestError(`invalid image index: ${describe(r.error)}`)
    return {
      kind: 'index',
      mediaType: type ?? (obj.mediaType === DOCKER_MANIFEST_LIST ? DOCKER_MANIFEST_LIST : OCI_INDEX),
      manifests: r.data.manifests.map(({ mediaType, digest, size, platform }) => ({
        mediaType,
        digest,
        size,
        ...(platform && {
          platform: {
            os: platform.os,
            architecture: platform.architecture,
            ...(platform.variant && { variant: platform.variant })
          }
        })
      }))
    }
  }
  const r = manifestSchema.safeParse(obj)
  if (!r.success) throw new InvalidManifestError(`invalid image manifest: ${describe(r.error)}`)
  const pick = ({ mediaType, digest, size }: Descriptor): Descriptor => ({ mediaType, digest, size })
  return {
    kind: 'manifest',
    mediaType: type ?? (obj.mediaType === DOCKER_MANIFEST ? DOCKER_MANIFEST : OCI_MANIFEST),
    config: pick(r.data.config),
    layers: r.data.layers.map(pick)
  }
}

function describe(error: z.ZodError): string {
  const issue = error.issues[0]
  if (!issue) return 'unknown problem'
  const path = issue.path.length ? issue.path.join('.') : '(root)'
  return `${path}: ${issue.message}`
}

/**
 * The media type a manifest names for itself when nothing else says it (no Content-Type, no
 * descriptor): its `mediaType` field, else its shape (`manifests` makes it an OCI index). OCI
 * layouts written by umoci omit the field. Throws `InvalidManifestError` for anything but a JSON
 * object.
 */
export function selfDescribedMediaType(bytes: Uint8Array): string {
  let parsed: unknown
  try {
    parsed = JSON.parse(Buffer.from(bytes).toString('utf8'))
  } catch (err) {
    throw new InvalidManifestError(`manifest is not valid JSON: ${(err as Error).message}`)
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new InvalidManifestError('manifest is not a JSON object')
  }
  const o = parsed as { mediaType?: unknown; manifests?: unknown }
  if (typeof o.mediaType === 'string' && o.mediaType !== '') return o.mediaType
  return Array.isArray(o.manifests) ? OCI_INDEX : OCI_MANIFEST
}
