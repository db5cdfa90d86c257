import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { startContainerd, type TestContainerd } from '../../harness/containerd.ts'
import { buildTestImages, type PushedImages, pushTestImages, type TestImages } from '../../harness/images.ts'
import { startRegistry, type TestRegistry } from '../../harness/registry.ts'
import { podmanPullViaMirror, skopeoCopyViaMirror } from '../../harness/skopeo.ts'

const run = promisify(execFile)
const SCRIPT = fileURLToPath(new URL('../../fixtures/build-images.sh', import.meta.url))
/** Nothing listens there: a mirror that refuses, so every client falls back to the registry. */
const DEAD_MIRROR = '127.0.0.1:1'

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}

async function inspectRaw(ref: string): Promise<Buffer> {
  const args = ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`]
  return (await run('skopeo', args, { encoding: 'buffer' })).stdout
}

// The harness itself, against the real tools: the images build reproducibly, skopeo pushes
// them with their digests intact, containerd pulls them straight from the registry.
describe('test images, registry push and the containerd/skopeo/podman harnesses', () => {
  let images: TestImages
  let registry: TestRegistry
  let containerd: TestContainerd
  let pushed: PushedImages
  let work: string

  before(async () => {
    images = await buildTestImages()
    registry = await startRegistry()
    pushed = await pushTestImages(registry.host, images)
    containerd = await startContainerd()
    work = await mkdtemp(join(tmpdir(), 'shoal-harness-'))
  })
  after(async () => {
    await containerd?.stop()
    await registry?.stop()
    if (work) await rm(work, { recursive: true, force: true })
  })

  it('builds every image described from its layout, with the promised shapes', () => {
    const i = images.images
    assert.deepEqual(Object.keys(i).sort(), [
      'multi:v1',
      'multi:v2',
      'multiarch',
      'random',
      'tiny',
      'whiteout'
    ])
    assert.equal(i.tiny?.layers.length, 1)
    const v1 = i['multi:v1']?.layers ?? []
    const v2 = i['multi:v2']?.layers ?? []
    assert.equal(v1.length, 5)
    const total = v1.reduce((n, l) => n + l.size, 0)
    assert.ok(total > 90 * 1024 * 1024 && total < 120 * 1024 * 1024, `multi:v1 is ${total} bytes`)
    assert.deepEqual(v2.slice(0, 4), v1.slice(0, 4))
    assert.notEqual(v2[4]?.digest, v1[4]?.digest)
    const random = i.random?.layers ?? []
    assert.equal(random.length, 1)
    assert.ok((random[0]?.size ?? 0) > 33 * 1024 * 1024)
    assert.notEqual((random[0]?.size ?? 0) % (4 * 1024 * 1024), 0)
    assert.equal(i.whiteout?.layers.length, 3)
    assert.equal(i.multiarch?.mediaType, 'application/vnd.oci.image.index.v1+json')
    assert.deepEqual(i.multiarch?.platforms?.map((p) => p.platform).sort(), ['linux/amd64', 'linux/arm64/v8'])
  })

  it('builds the same digests twice (reproducible)', async () => {
    const again = join(work, 'rebuild')
    await run('bash', [SCRIPT, again], { maxBuffer: 16 * 1024 * 1024 })
    for (const layout of ['tiny', 'multi', 'random', 'whiteout', 'multiarch']) {
      const a = await readFile(join(images.dir, layout, 'index.json'), 'utf8')
      const b = await readFile(join(again, layout, 'index.json'), 'utf8')
      assert.equal(b, a, `${layout}/index.json differs between builds`)
    }
    await rm(again, { recursive: true, force: true })
  })

  it('pushes every image with the digests of its layout (and tiny once more as Docker schema 2)', async () => {
    assert.ok(pushed['tiny-docker'])
    assert.equal(pushed['tiny-docker'].mediaType, 'application/vnd.docker.distribution.manifest.v2+json')
    assert.deepEqual(
      pushed['tiny-docker'].layers.map((l) => l.digest),
      pushed.tiny?.layers.map((l) => l.digest)
    )
    for (const [name, image] of Object.entries(pushed)) {
      assert.equal(image.ref, `${registry.host}/${image.repository}:${image.tag}`)
      const raw = await inspectRaw(image.ref)
      assert.equal(sha256(raw), image.manifestDigest, name)
      if (image.platforms) continue
      const layers = (JSON.parse(raw.toString('utf8')) as { layers: { digest: string }[] }).layers
      assert.deepEqual(
        layers.map((l) => l.digest),
        image.layers.map((l) => l.digest),
        name
      )
    }
  })

  it('containerd pulls tiny straight from the registry, runs it, and refetches after removeAll', async () => {
    const tiny = pushed.tiny
    assert.ok(tiny)
    registry.resetCounters()
    const r = await containerd.pull(tiny.ref)
    assert.equal(r.code, 0, `${r.stderr}\n${containerd.logs()}`)
    assert.doesNotMatch(r.stderr, /failed to decode hosts.toml/)
    const content = await containerd.contentDigests()
    for (const d of [tiny.manifestDigest, tiny.config.digest, ...tiny.layers.map((l) => l.digest)]) {
      assert.ok(content.includes(d), `${d} not in ${content.join(' ')}`)
    }
    const layer = tiny.layers[0]
    assert.ok(layer)
    assert.equal(registry.bytesServed(layer.digest), layer.size)

    const hi = await containerd.run(tiny.ref, ['/bin/busybox', 'sh', '-c', 'echo hi'])
    assert.equal(hi.code, 0, hi.stderr)
    assert.equal(hi.stdout.trim(), 'hi')

    await containerd.removeAll()
    assert.deepEqual(await containerd.contentDigests(), [])
    const again = await containerd.pull(tiny.ref)
    assert.equal(again.code, 0, again.stderr)
    assert.equal(registry.blobGets(layer.digest), 2)
  })

  it('containerd applies the whiteout layers and pulls only its platform from the index', async () => {
    const whiteout = pushed.whiteout
    assert.ok(whiteout)
    assert.equal((await containerd.pull(whiteout.ref)).code, 0)
    const ls = await containerd.run(whiteout.ref, ['/bin/sh', '-c', 'ls /data; ls /data/olddir'])
    assert.equal(ls.code, 0, ls.stderr)
    assert.deepEqual(ls.stdout.split(/\s+/).filter(Boolean), ['keep.txt', 'olddir', 'z'])

    const multiarch = pushed.multiarch
    assert.ok(multiarch?.platforms)
    const r = await containerd.pull(multiarch.ref)
    assert.equal(r.code, 0, r.stderr)
    const content = await containerd.contentDigests()
    for (const p of multiarch.platforms) {
      const native: boolean = p.layers === multiarch.layers
      for (const l of p.layers) assert.equal(content.includes(l.digest), native, `${p.platform} ${l.digest}`)
    }
    const docker = pushed['tiny-docker']
    assert.ok(docker)
    assert.equal((await containerd.pull(docker.ref)).code, 0)
  })

  it('falls back from a refusing mirror unless told not to', async () => {
    const random = pushed.random
    assert.ok(random)
    await containerd.removeAll()
    const strict = await containerd.pull(random.ref, { mirrorHost: DEAD_MIRROR, fallback: false })
    assert.notEqual(strict.code, 0, 'no mirror and no fallback: the pull must fail')
    const lenient = await containerd.pull(random.ref, { mirrorHost: DEAD_MIRROR })
    assert.equal(lenient.code, 0, lenient.stderr)
    assert.ok((await containerd.contentDigests()).includes(random.layers[0]?.digest ?? ''))
  })

  it('skopeo and podman read the registries.conf the harness writes', async () => {
    const tiny = pushed.tiny
    assert.ok(tiny)
    const dest = join(work, 'skopeo-tiny')
    const copied = await skopeoCopyViaMirror({
      ref: tiny.ref,
      mirrorHost: DEAD_MIRROR,
      registryHost: registry.host,
      destDir: dest
    })
    assert.equal(copied.code, 0, copied.stderr)
    const files = await readdir(dest)
    for (const l of tiny.layers) assert.ok(files.includes(l.digest.slice(7)))
    assert.equal(sha256(await readFile(join(dest, 'manifest.json'))), tiny.manifestDigest)

    const podman = await podmanPullViaMirror({
      ref: tiny.ref,
      mirrorHost: DEAD_MIRROR,
      registryHost: registry.host
    })
    assert.equal(podman.code, 0, podman.stderr)
    assert.equal(podman.digest, tiny.manifestDigest)
  })
})
