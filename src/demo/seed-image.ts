import { createCipheriv, createHash } from 'node:crypto'
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import { pack } from 'tar-stream'
import { OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST } from '../oci/media-types.ts'
import { defaultPlatform } from '../oci/platform.ts'

/** What `writeDemoImage` wrote: enough to seed an agent and to check what it serves. */
export interface DemoImage {
  /** The OCI image layout directory. */
  dir: string
  repository: string
  tag: string
  manifestDigest: string
  /** Compressed layers, in manifest order. */
  layers: { digest: string; size: number }[]
}

const REPOSITORY = 'shoal/demo'
const TAG = 'v1'
/**
 * Bumped whenever the generated content changes. A layout carrying another version is
 * rewritten; one carrying this version whose blobs all hash right is reused as is.
 */
const SEED_VERSION = '1'
const VERSION_ANNOTATION = 'dev.shoal.seed.version'
const REF_NAME = 'org.opencontainers.image.ref.name'
const CREATED = '2024-01-01T00:00:00Z'
const MiB = 1024 * 1024

interface TarFile {
  name: string
  type: 'file' | 'directory'
  body?: Buffer
  mode?: number
}

interface Blob {
  digest: string
  size: number
  bytes: Buffer
}

/**
 * Writes the demo seed image, a real OCI image layout (`oci-layout`, `index.json`,
 * `blobs/sha256/...`), to `dir` and describes it. The content is deterministic: tar entries are
 * sorted with zero mtimes and fixed owners, gzip carries no timestamp and the "random" layer
 * comes from AES-128-CTR over zeros with a fixed key, so every run on the same architecture
 * gives the same manifest digest. Four layers: a small base, ~8 MiB of text, ~24 MiB of
 * incompressible bytes and a tiny layer whose whiteout deletes a file of the base.
 *
 * A directory already holding this version of the image, every blob intact, is reused without
 * regenerating anything.
 */
export async function writeDemoImage(dir: string): Promise<DemoImage> {
  const existing = await readExisting(dir)
  if (existing) return existing

  const layerTars = [baseLayer(), textLayer(), randomLayer(), whiteoutLayer()]
  const history = [
    'ADD base files (os-release, hosts, motd)',
    'ADD /usr/share/demo/text: 8 MiB of generated text',
    'ADD /opt/demo/random.bin: 24 MiB of incompressible bytes',
    'RUN rm /etc/motd'
  ]
  const diffIds: string[] = []
  const layers: Blob[] = []
  for (const entries of layerTars) {
    const tar = await tarOf(entries)
    diffIds.push(sha256(tar))
    // level 6 (zlib's default) pinned so that a changed default never changes the digests.
    layers.push(blobOf(gzipSync(tar, { level: 6 })))
  }

  const platform = defaultPlatform()
  const config = blobOf(
    Buffer.from(
      JSON.stringify({
        created: CREATED,
        architecture: platform.architecture,
        ...(platform.variant && { variant: platform.variant }),
        os: 'linux',
        config: {
          Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
          Cmd: ['/bin/sh'],
          WorkingDir: '/',
          Labels: { 'org.opencontainers.image.title': 'shoal demo seed' }
        },
        rootfs: { type: 'layers', diff_ids: diffIds },
        history: history.map((created_by) => ({ created: CREATED, created_by }))
      })
    )
  )
  const manifest = blobOf(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: OCI_CONFIG, digest: config.digest, size: config.size },
        layers: layers.map((l) => ({ mediaType: OCI_LAYER_GZIP, digest: l.digest, size: l.size }))
      })
    )
  )

  const blobDir = join(dir, 'blobs', 'sha256')
  await mkdir(blobDir, { recursive: true })
  for (const b of [...layers, config, manifest]) {
    await atomicWrite(join(blobDir, b.digest.slice('sha256:'.length)), b.bytes)
  }
  await atomicWrite(join(dir, 'oci-layout'), Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })))
  const index = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [
      {
        mediaType: OCI_MANIFEST,
        digest: manifest.digest,
        size: manifest.size,
        annotations: { [REF_NAME]: TAG, [VERSION_ANNOTATION]: SEED_VERSION }
      }
    ]
  }
  // index.json last: a layout interrupted before this point is not taken as complete.
  await atomicWrite(join(dir, 'index.json'), Buffer.from(JSON.stringify(index)))
  return describe(dir, manifest.digest, layers)
}

function describe(
  dir: string,
  manifestDigest: string,
  layers: { digest: string; size: number }[]
): DemoImage {
  return {
    dir,
    repository: REPOSITORY,
    tag: TAG,
    manifestDigest,
    layers: layers.map((l) => ({ digest: l.digest, size: l.size }))
  }
}

/** The image already in `dir` when it is this version and every blob it names hashes right. */
async function readExisting(dir: string): Promise<DemoImage | undefined> {
  try {
    const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as {
      manifests?: { digest?: string; annotations?: Record<string, string> }[]
    }
    const entry = index.manifests?.find(
      (m) => m.annotations?.[REF_NAME] === TAG && m.annotations?.[VERSION_ANNOTATION] === SEED_VERSION
    )
    if (!entry?.digest) return undefined
    const manifestBytes = await readBlob(dir, entry.digest)
    if (!manifestBytes) return undefined
    const manifest = JSON.parse(manifestBytes.toString('utf8')) as {
      config: { digest: string }
      layers: { digest: string; size: number }[]
    }
    for (const d of [manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) {
      if (!(await readBlob(dir, d))) return undefined
    }
    return describe(dir, entry.digest, manifest.layers)
  } catch {
    return undefined
  }
}

async function readBlob(dir: string, digest: string): Promise<Buffer | undefined> {
  if (!/^sha256:[a-f0-9]{64}$/.test(digest)) return undefined
  const bytes = await readFile(join(dir, 'blobs', 'sha256', digest.slice(7))).catch(() => undefined)
  return bytes && sha256(bytes) === digest ? bytes : undefined
}

async function atomicWrite(path: string, bytes: Buffer): Promise<void> {
  const existing = await stat(path).catch(() => undefined)
  if (existing?.size === bytes.length && (await readFile(path)).equals(bytes)) return
  const tmp = `${path}.tmp-${process.pid}`
  await writeFile(tmp, bytes)
  await rename(tmp, path)
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}

function blobOf(bytes: Buffer): Blob {
  return { digest: sha256(bytes), size: bytes.length, bytes }
}

/** A tar of `entries`, sorted by name, with zero mtimes, root owner and fixed modes. */
async function tarOf(entries: TarFile[]): Promise<Buffer> {
  const p = pack()
  const chunks: Buffer[] = []
  const collected = (async () => {
    for await (const chunk of p) chunks.push(chunk as Buffer)
  })()
  const sorted = [...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  for (const e of sorted) {
    const body = e.type === 'file' ? (e.body ?? Buffer.alloc(0)) : Buffer.alloc(0)
    const header = {
      name: e.name,
      type: e.type,
      mode: e.mode ?? (e.type === 'directory' ? 0o755 : 0o644),
      mtime: new Date(0),
      uid: 0,
      gid: 0,
      uname: 'root',
      gname: 'root',
      size: body.length
    }
    await new Promise<void>((resolve, reject) => {
      p.entry(header, body, (err) => (err ? reject(err) : resolve()))
    })
  }
  p.finalize()
  await collected
  return Buffer.concat(chunks)
}

function dirs(...names: string[]): TarFile[] {
  return names.map((name) => ({ name: `${name}/`, type: 'directory' as const }))
}

function file(name: string, body: string | Buffer, mode?: number): TarFile {
  return { name, type: 'file', body: typeof body === 'string' ? Buffer.from(body) : body, mode }
}

function baseLayer(): TarFile[] {
  return [
    ...dirs('etc', 'bin', 'tmp', 'usr', 'usr/share', 'usr/share/demo', 'opt', 'var', 'var/lib'),
    file(
      'etc/os-release',
      'NAME="Shoal Demo"\nID=shoal-demo\nVERSION_ID=1\nPRETTY_NAME="Shoal demo seed image"\n' +
        'HOME_URL="https://example.invalid/shoal"\n'
    ),
    file('etc/hostname', 'shoal-demo\n'),
    file('etc/hosts', '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'),
    file(
      'etc/passwd',
      'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n'
    ),
    file('etc/group', 'root:x:0:\nnogroup:x:65534:\n'),
    file('etc/motd', 'Welcome to the Shoal demo image. The last layer deletes this file.\n'),
    file('bin/hello', '#!/bin/sh\necho "hello from the shoal demo image"\n', 0o755)
  ]
}

const WORDS = (
  'layer piece peer swarm digest blob manifest registry mirror verify chunk store fetch ' +
  'announce provider content index platform shoal container image runtime snapshot pull'
).split(' ')

/** ~8 MiB of text over 64 files: compresses, but not to nothing (each line carries a hash). */
function textLayer(): TarFile[] {
  const files: TarFile[] = [...dirs('usr/share/demo/text')]
  const perFile = (8 * MiB) / 64
  for (let f = 0; f < 64; f++) {
    const lines: string[] = []
    let size = 0
    for (let n = 0; size < perFile; n++) {
      const h = createHash('sha256').update(`${f}:${n}`).digest()
      const words = Array.from({ length: 8 }, (_, i) => WORDS[(h[i] ?? 0) % WORDS.length]).join(' ')
      const line = `${String(n).padStart(6, '0')} ${words} ${h.toString('hex', 8, 20)}\n`
      lines.push(line)
      size += line.length
    }
    const body = Buffer.from(lines.join('')).subarray(0, perFile)
    files.push(file(`usr/share/demo/text/part-${String(f).padStart(2, '0')}.txt`, body))
  }
  return files
}

/** Deterministic incompressible bytes: AES-128-CTR of zeros under a fixed key and counter. */
function pseudoRandom(seed: string, length: number): Buffer {
  const key = createHash('sha256').update(`shoal-demo-key:${seed}`).digest().subarray(0, 16)
  const iv = createHash('sha256').update(`shoal-demo-iv:${seed}`).digest().subarray(0, 16)
  const cipher = createCipheriv('aes-128-ctr', key, iv)
  return Buffer.concat([cipher.update(Buffer.alloc(length)), cipher.final()])
}

function randomLayer(): TarFile[] {
  return [...dirs('opt/demo'), file('opt/demo/random.bin', pseudoRandom('random-layer', 24 * MiB))]
}

/** Deletes `/etc/motd` of the base layer (an AUFS-style `.wh.` entry) and adds a marker. */
function whiteoutLayer(): TarFile[] {
  return [
    ...dirs('etc', 'var', 'var/lib', 'var/lib/demo'),
    file('etc/.wh.motd', Buffer.alloc(0)),
    file('var/lib/demo/ready', 'the demo image is complete\n')
  ]
}
