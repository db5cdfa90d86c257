/**
 * An OCI image layout written by a test, to seed an agent with whatever a hostile registry
 * could serve: blobs are named by their real digests (the layout upstream checks them), the
 * manifests they make up need not be valid.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { digestOf } from '../../../src/content/digest.ts'
import { OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST } from '../../../src/oci/media-types.ts'

/** A descriptor as manifests write it. */
export interface LayoutDescriptor {
  mediaType: string
  digest: string
  size: number
}

export class TestLayout {
  readonly #blobs = new Map<string, Uint8Array>()
  readonly #tags: (LayoutDescriptor & { annotations: Record<string, string> })[] = []

  /** Stores a blob under its digest and describes it. */
  blob(bytes: Uint8Array, mediaType = OCI_LAYER_GZIP): LayoutDescriptor {
    const digest = digestOf(bytes)
    this.#blobs.set(digest, bytes)
    return { mediaType, digest, size: bytes.length }
  }

  /** Stores manifest bytes (valid or not) and names them `tag` in index.json. */
  tag(tag: string, manifest: Uint8Array | object, mediaType = OCI_MANIFEST): LayoutDescriptor {
    const bytes = manifest instanceof Uint8Array ? manifest : Buffer.from(JSON.stringify(manifest))
    const d = this.blob(bytes, mediaType)
    this.#tags.push({ ...d, annotations: { 'org.opencontainers.image.ref.name': tag } })
    return d
  }

  /** An image manifest with a small config and these layers. */
  image(tag: string, layers: LayoutDescriptor[]): LayoutDescriptor {
    const config = this.blob(
      Buffer.from(
        JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } })
      ),
      OCI_CONFIG
    )
    return this.tag(tag, { schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers })
  }

  /** Writes `oci-layout`, `index.json` and every blob under `dir`. */
  async write(dir: string): Promise<void> {
    await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true })
    await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}')
    await writeFile(
      join(dir, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: this.#tags
      })
    )
    for (const [digest, bytes] of this.#blobs)
      await writeFile(join(dir, 'blobs', 'sha256', digest.slice(7)), bytes)
  }
}
