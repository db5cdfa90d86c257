import { createHash } from 'node:crypto'
import { digestHex, parseDigest } from '../content/digest.ts'
import { BadRequestError } from '../errors.ts'

/** A finished layer volume: `shoal-layer-<hex of its chain ID>`. */
export const LAYER_PREFIX = 'shoal-layer-'
/** A layer volume being built: renamed to its `LAYER_PREFIX` name once complete. */
export const BUILDING_PREFIX = 'shoal-tmp-'
/** A container's writable volume: `shoal-ctr-<name>`. */
export const CONTAINER_PREFIX = 'shoal-ctr-'

/** Tag holding the layer blob's digest, so a restart knows what a volume holds. */
export const DIGEST_TAG = 'shoal.digest='
/** Tag holding the parent volume's chain ID (hex): LVM forgets a snapshot's origin once removed. */
export const PARENT_TAG = 'shoal.parent='
/** Tag holding the file system type of a layer volume (and so of its snapshots). */
export const FSTYPE_TAG = 'shoal.fstype='

/**
 * Tag holding a volume's block identity: a name for its exact bytes. A hyperlayer made against
 * a volume carries its identity as the parent, and applies only on a volume with the same one
 * (see `blockIdentity`).
 */
export const BLOCKS_TAG = 'shoal.blocks='

/** Container volume names: what containerd and podman use as IDs, and safe in an LV name. */
const CONTAINER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$/
/** Volume group and thin pool names LVM accepts (no leading hyphen). */
const LVM_NAME_RE = /^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,63}$/

/** One layer of an image, placed on its parent. */
export interface ChainLayer {
  /** The layer blob's digest. */
  digest: string
  /** Hex of the chain ID: this layer on exactly these layers below it. */
  chain: string
  /** Hex of the parent's chain ID; undefined for the bottom layer. */
  parent?: string
}

/**
 * The layers of an image (bottom first) with their chain IDs, computed as OCI computes a
 * ChainID but from the layer digests: the bottom layer's is its digest, each next one
 * `sha256(<parent chain ID> + " " + <layer digest>)`. Two images that share a prefix of layers
 * share those chain IDs (and so those volumes); the same layer on another parent gets another
 * one. Throws `InvalidDigestError` for a malformed digest.
 */
export function chainLayers(layerDigests: readonly string[]): ChainLayer[] {
  const out: ChainLayer[] = []
  let parent: string | undefined
  for (const digest of layerDigests) {
    parseDigest(digest)
    const chain =
      parent === undefined
        ? digestHex(digest)
        : createHash('sha256').update(`sha256:${parent} ${digest}`).digest('hex')
    out.push(parent === undefined ? { digest, chain } : { digest, chain, parent })
    parent = chain
  }
  return out
}

/**
 * The tags of a layer volume: its blob's digest, its file system and, above the bottom layer,
 * its parent's chain ID (what `start()` reads back to rebuild the chains).
 */
export function layerVolumeTags(layer: ChainLayer, fstype: string): string[] {
  const tags = [`${DIGEST_TAG}${layer.digest}`, `${FSTYPE_TAG}${fstype}`]
  if (layer.parent !== undefined) tags.push(`${PARENT_TAG}${layer.parent}`)
  return tags
}

/** The volume name of a finished layer. */
export function layerVolumeName(chain: string): string {
  return `${LAYER_PREFIX}${chain}`
}

/** The volume name of a layer while it is built. */
export function buildingVolumeName(chain: string): string {
  return `${BUILDING_PREFIX}${chain}`
}

/** The volume name of a container's writable volume; throws `BadRequestError` for a bad name. */
export function containerVolumeName(name: string): string {
  if (!CONTAINER_NAME_RE.test(name)) {
    throw new BadRequestError(
      `container volume name ${JSON.stringify(name)} must be 1-64 letters, digits, dots or hyphens`
    )
  }
  return `${CONTAINER_PREFIX}${name}`
}

/** The chain ID (hex) a finished layer volume is named after, or undefined for another name. */
export function chainOfVolume(name: string): string | undefined {
  const hex = name.startsWith(LAYER_PREFIX) ? name.slice(LAYER_PREFIX.length) : ''
  return /^[a-f0-9]{64}$/.test(hex) ? hex : undefined
}

/** The value of the tag starting with `prefix`, if the volume has one. */
export function tagValue(tags: readonly string[], prefix: string): string | undefined {
  return tags.find((t) => t.startsWith(prefix))?.slice(prefix.length)
}

/** True for a name LVM accepts as a volume group or thin pool. */
export function isLvmName(name: string): boolean {
  return LVM_NAME_RE.test(name)
}

/**
 * The block identity of the volume a hyperlayer makes: computed like a chain ID, from the
 * identity of the volume it applies on (none for a root hyperlayer) and its digest. A volume
 * built only from hyperlayers thus has its chain ID as identity on every node, and two volumes
 * with one identity hold the same bytes.
 */
export function blockIdentity(parent: string | undefined, digest: string): string {
  return parent === undefined
    ? digestHex(digest)
    : createHash('sha256').update(`sha256:${parent} ${digest}`).digest('hex')
}
