/**
 * The image a protocol-level run distributes: layers of incompressible bytes made from a seed
 * (AES-128-CTR over zeros: fast, reproducible, so the same scenario gives the same digests),
 * each an uncompressed tar holding one file, with an OCI config and manifest.
 */
import { createCipheriv, createHash } from 'node:crypto'

const TAR_BLOCK = 512
/** A tar's header block plus its two zero blocks at the end. */
const TAR_FRAME = 3 * TAR_BLOCK
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json'
const OCI_LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar'

/** A blob with its bytes. */
export interface ImageBlob {
  digest: string
  mediaType: string
  data: Buffer
}

/** A whole image, ready to push. */
export interface GeneratedImage {
  manifest: ImageBlob
  config: ImageBlob
  layers: ImageBlob[]
  /** Sum of the layers' sizes: the F of T_min. */
  layerBytes: number
}

/**
 * An image whose layers have exactly `layerSizes` bytes (each a multiple of 512, at least 2048:
 * a tar is made of 512-byte blocks).
 */
export function generateImage(layerSizes: readonly number[], seed: number): GeneratedImage {
  const layers = layerSizes.map((size, i) => blob(OCI_LAYER_TAR, randomTar(size, seed, i)))
  const config = blob(
    OCI_CONFIG,
    Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        config: {},
        // Uncompressed layers: each diff id is the layer's own digest.
        rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
        history: layers.map((_, i) => ({ created_by: `shoal simulation layer ${i}` }))
      })
    )
  )
  const descriptor = (b: ImageBlob) => ({ mediaType: b.mediaType, digest: b.digest, size: b.data.length })
  const manifest = blob(
    OCI_MANIFEST,
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: descriptor(config),
        layers: layers.map(descriptor)
      })
    )
  )
  return { manifest, config, layers, layerBytes: layerSizes.reduce((a, b) => a + b, 0) }
}

/**
 * Splits `total` bytes into `count` layer sizes a tar can have: multiples of 512, at least
 * 2048 each, as equal as that allows; the last takes the rounding.
 */
export function layerSizes(total: number, count = 1): number[] {
  const blocks = Math.max(4 * count, Math.round(total / TAR_BLOCK))
  const each = Math.max(4, Math.floor(blocks / count))
  const sizes = Array.from({ length: count }, () => each * TAR_BLOCK)
  sizes[count - 1] = (blocks - each * (count - 1)) * TAR_BLOCK
  return sizes
}

function blob(mediaType: string, data: Buffer): ImageBlob {
  return { digest: `sha256:${createHash('sha256').update(data).digest('hex')}`, mediaType, data }
}

/** A tar of exactly `size` bytes: one header, one file of random bytes, two zero blocks. */
function randomTar(size: number, seed: number, index: number): Buffer {
  if (size % TAR_BLOCK !== 0 || size < TAR_FRAME + TAR_BLOCK) {
    throw new RangeError(`a layer of ${size} bytes is not a tar size (a multiple of 512, at least 2048)`)
  }
  const content = size - TAR_FRAME
  const out = Buffer.alloc(size)
  tarHeader(`data-${index}.bin`, content).copy(out, 0)
  const key = createHash('sha256').update(`shoal-sim:${seed}:${index}`).digest().subarray(0, 16)
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16))
  const chunk = Buffer.alloc(Math.min(content, 1 << 20))
  for (let at = 0; at < content; at += chunk.length) {
    const n = Math.min(chunk.length, content - at)
    cipher.update(chunk.subarray(0, n)).copy(out, TAR_BLOCK + at)
  }
  return out
}

/** A ustar header for a regular file of `size` bytes, mode 0644, mtime 0. */
function tarHeader(name: string, size: number): Buffer {
  const h = Buffer.alloc(TAR_BLOCK)
  const put = (at: number, len: number, value: string) => h.write(value.slice(0, len), at, len, 'ascii')
  const octal = (n: number, len: number) => `${n.toString(8).padStart(len - 1, '0')}\0`
  put(0, 100, name)
  put(100, 8, octal(0o644, 8))
  put(108, 8, octal(0, 8))
  put(116, 8, octal(0, 8))
  put(124, 12, octal(size, 12))
  put(136, 12, octal(0, 12))
  put(148, 8, '        ')
  put(156, 1, '0')
  put(257, 6, 'ustar\0')
  put(263, 2, '00')
  let sum = 0
  for (const b of h) sum += b
  put(148, 8, `${sum.toString(8).padStart(6, '0')}\0 `)
  return h
}
