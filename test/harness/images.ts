import { execFile } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const run = promisify(execFile)

const SCRIPT = fileURLToPath(new URL('../fixtures/build-images.sh', import.meta.url))
/** Where built layouts are kept between processes; one subdirectory per script version. */
const CACHE_ROOT = process.env.SHOAL_TEST_IMAGES ?? '/tmp/shoal-test-images'
const SKOPEO = process.env.SHOAL_SKOPEO_BIN ?? 'skopeo'
const REF_NAME = 'org.opencontainers.image.ref.name'
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
const BUILD_TIMEOUT_MS = 180_000
const MAX_BUFFER = 64 * 1024 * 1024

/** A blob a manifest names. */
export interface TestBlob {
  digest: string
  size: number
  mediaType: string
}

/** One platform's manifest of an image index. */
export interface TestPlatformImage {
  /** `os/arch[/variant]`. */
  platform: string
  manifestDigest: string
  config: TestBlob
  layers: TestBlob[]
}

/** A test image in an OCI layout of the cache. */
export interface TestImage {
  /** `tiny`, `multi:v1`, `multi:v2`, `random`, `whiteout`, `multiarch`. */
  name: string
  /** The OCI image layout directory (skopeo `oci:<layout>:<tag>`). */
  layout: string
  /** Repository path in the registry, `test/<name without tag>`. */
  repository: string
  tag: string
  /** Digest of what the tag points at: a manifest, or an index for `multiarch`. */
  manifestDigest: string
  /** Media type of that manifest or index (umoci writes none in the body: it is the layout's). */
  mediaType: string
  config: TestBlob
  /** Layers in manifest order; for an index, those of this machine's platform (what ctr pulls). */
  layers: TestBlob[]
  /** Every platform's manifest, for an index only. */
  platforms?: TestPlatformImage[]
}

/** The built images: the cache directory holding their layouts and each image by name. */
export interface TestImages {
  dir: string
  images: Record<string, TestImage>
}

/** A test image pushed to a registry. */
export interface PushedImage extends TestImage {
  /** `<registryHost>/<repository>:<tag>`. */
  ref: string
  registryHost: string
}

/** Pushed images by name: those of `TestImages`, and `tiny-docker` (tiny as Docker schema 2). */
export type PushedImages = Record<string, PushedImage>

/** Image name → layout directory and tag, as build-images.sh writes them. */
const CATALOGUE: Record<string, { layout: string; tag: string }> = {
  tiny: { layout: 'tiny', tag: 'latest' },
  'multi:v1': { layout: 'multi', tag: 'v1' },
  'multi:v2': { layout: 'multi', tag: 'v2' },
  random: { layout: 'random', tag: 'latest' },
  whiteout: { layout: 'whiteout', tag: 'latest' },
  multiarch: { layout: 'multiarch', tag: 'latest' }
}

let building: Promise<TestImages> | undefined

/**
 * Builds the integration-test images with test/fixtures/build-images.sh (umoci, reproducible)
 * and describes them from their layouts. The layouts are cached under
 * `$SHOAL_TEST_IMAGES` (default /tmp/shoal-test-images) by a hash of the script, so a changed
 * script builds afresh and an unchanged one is built once per machine; within a process the
 * work is done once.
 */
export function buildTestImages(): Promise<TestImages> {
  building ??= buildOnce().catch((err: unknown) => {
    building = undefined
    throw err
  })
  return building
}

async function buildOnce(): Promise<TestImages> {
  const script = await readFile(SCRIPT)
  const version = `${createHash('sha256').update(script).digest('hex').slice(0, 16)}-${process.arch}`
  const dir = join(CACHE_ROOT, version)
  if (!(await isComplete(dir))) {
    await mkdir(CACHE_ROOT, { recursive: true })
    // Build next to the final place and rename: a concurrent build or a crash never leaves a
    // half-written cache behind.
    const tmp = join(CACHE_ROOT, `.build-${process.pid}-${randomBytes(4).toString('hex')}`)
    try {
      await run('bash', [SCRIPT, tmp], { timeout: BUILD_TIMEOUT_MS, maxBuffer: MAX_BUFFER })
      await writeFile(join(tmp, 'complete'), `${version}\n`)
      await rename(tmp, dir).catch(async (err: NodeJS.ErrnoException) => {
        if (!(await isComplete(dir))) throw err
      })
    } catch (err) {
      throw new Error(`building the test images failed: ${describeError(err)}`)
    } finally {
      await rm(tmp, { recursive: true, force: true })
    }
  }
  const images: Record<string, TestImage> = {}
  for (const [name, { layout, tag }] of Object.entries(CATALOGUE)) {
    images[name] = await readImage(name, join(dir, layout), tag)
  }
  return { dir, images }
}

async function isComplete(dir: string): Promise<boolean> {
  return (await stat(join(dir, 'complete')).catch(() => undefined)) !== undefined
}

interface Descriptor {
  mediaType?: string
  digest: string
  size: number
  platform?: { os: string; architecture: string; variant?: string }
  annotations?: Record<string, string>
}

interface ManifestJson {
  mediaType?: string
  config?: Descriptor
  layers?: Descriptor[]
  manifests?: Descriptor[]
}

async function readImage(name: string, layout: string, tag: string): Promise<TestImage> {
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as ManifestJson
  const top = index.manifests?.find((m) => m.annotations?.[REF_NAME] === tag)
  if (!top) throw new Error(`${layout}: no manifest tagged ${tag}`)
  const body = await readJsonBlob(layout, top.digest)
  const mediaType = top.mediaType ?? body.mediaType ?? OCI_MANIFEST
  const base = { name, layout, repository: `test/${name.split(':')[0]}`, tag, manifestDigest: top.digest }
  if (mediaType !== OCI_INDEX && mediaType !== DOCKER_LIST) {
    return { ...base, mediaType, ...manifestBlobs(body) }
  }
  const platforms: TestPlatformImage[] = []
  for (const m of body.manifests ?? []) {
    if (!m.platform) continue
    const p = m.platform
    platforms.push({
      platform: [p.os, p.architecture, p.variant].filter(Boolean).join('/'),
      manifestDigest: m.digest,
      ...manifestBlobs(await readJsonBlob(layout, m.digest))
    })
  }
  const native = platforms.find((p) => p.platform.split('/')[1] === nativeArchitecture())
  if (!native) throw new Error(`${layout}: no manifest for linux/${nativeArchitecture()}`)
  return { ...base, mediaType, config: native.config, layers: native.layers, platforms }
}

function manifestBlobs(m: ManifestJson): { config: TestBlob; layers: TestBlob[] } {
  if (!m.config || !m.layers) throw new Error('not an image manifest')
  const blob = (d: Descriptor): TestBlob => ({ digest: d.digest, size: d.size, mediaType: d.mediaType ?? '' })
  return { config: blob(m.config), layers: m.layers.map(blob) }
}

async function readJsonBlob(layout: string, digest: string): Promise<ManifestJson> {
  const bytes = await readFile(join(layout, 'blobs', 'sha256', digest.replace(/^sha256:/, '')))
  return JSON.parse(bytes.toString('utf8')) as ManifestJson
}

/** This machine's architecture in OCI terms (what ctr pulls from an index by default). */
export function nativeArchitecture(): string {
  return process.arch === 'x64' ? 'amd64' : process.arch
}

/**
 * Pushes every test image to the registry at `registryHost` (plain HTTP) with real skopeo, as
 * `<registryHost>/test/<name>:<tag>`, keeping the layouts' digests (`--preserve-digests`;
 * `--all` for the index). Also pushes `tiny` converted to Docker schema 2 as
 * `test/tiny-docker:latest` and reads back its digest (the conversion rewrites the manifest;
 * the layer bytes stay the same).
 */
export async function pushTestImages(
  registryHost: string,
  images: TestImages,
  /** Push only these images (by name; `tiny-docker` needs `tiny`); all of them by default. */
  names?: string[]
): Promise<PushedImages> {
  const pushed: PushedImages = {}
  for (const image of Object.values(images.images)) {
    if (names !== undefined && !names.includes(image.name)) continue
    const ref = `${registryHost}/${image.repository}:${image.tag}`
    await skopeo([
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      '--preserve-digests',
      ...(image.platforms ? ['--all'] : []),
      `oci:${image.layout}:${image.tag}`,
      `docker://${ref}`
    ])
    pushed[image.name] = { ...image, ref, registryHost }
  }

  if (names !== undefined && !names.includes('tiny-docker')) return pushed
  const tiny = images.images.tiny
  if (!tiny) throw new Error('no tiny test image')
  const ref = `${registryHost}/test/tiny-docker:latest`
  await skopeo([
    'copy',
    '--quiet',
    '--dest-tls-verify=false',
    '--format',
    'v2s2',
    `oci:${tiny.layout}:${tiny.tag}`,
    `docker://${ref}`
  ])
  const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${ref}`])
  const manifest = JSON.parse(raw.toString('utf8')) as ManifestJson
  pushed['tiny-docker'] = {
    name: 'tiny-docker',
    layout: tiny.layout,
    repository: 'test/tiny-docker',
    tag: 'latest',
    manifestDigest: `sha256:${createHash('sha256').update(raw).digest('hex')}`,
    mediaType: manifest.mediaType ?? '',
    ...manifestBlobs(manifest),
    ref,
    registryHost
  }
  return pushed
}

async function skopeo(args: string[]): Promise<Buffer> {
  try {
    const { stdout } = await run(SKOPEO, ['--insecure-policy', ...args], {
      encoding: 'buffer',
      maxBuffer: MAX_BUFFER,
      timeout: 120_000
    })
    return stdout
  } catch (err) {
    throw new Error(`skopeo ${args.join(' ')}: ${describeError(err)}`)
  }
}

function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const stderr = (err as { stderr?: Buffer | string }).stderr
  return stderr && stderr.length > 0 ? `${err.message}\n${stderr.toString()}` : err.message
}
