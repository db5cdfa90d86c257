import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { gunzipSync } from 'node:zlib'
import { writeDemoImage } from '../../../src/demo/seed-image.ts'

const run = promisify(execFile)

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}

async function blob(dir: string, digest: string): Promise<Buffer> {
  return readFile(join(dir, 'blobs', 'sha256', digest.replace(/^sha256:/, '')))
}

describe('writeDemoImage', () => {
  let root: string
  let a: Awaited<ReturnType<typeof writeDemoImage>>
  let b: Awaited<ReturnType<typeof writeDemoImage>>

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'shoal-seed-'))
    a = await writeDemoImage(join(root, 'a'))
    b = await writeDemoImage(join(root, 'b'))
  })
  after(async () => {
    await rm(root, { recursive: true, force: true })
  })

  it('is deterministic: two runs into different directories give the same manifest digest', () => {
    assert.equal(a.manifestDigest, b.manifestDigest)
    assert.deepEqual(a.layers, b.layers)
    assert.equal(a.repository, 'shoal/demo')
    assert.equal(a.tag, 'v1')
    assert.equal(a.layers.length, 4)
    const big = Math.max(...a.layers.map((l) => l.size))
    assert.ok(big > 20 * 1024 * 1024, `largest layer ${big} bytes`)
  })

  it('writes a layout whose every blob hashes to its file name', async () => {
    const layout = JSON.parse(await readFile(join(a.dir, 'oci-layout'), 'utf8'))
    assert.equal(layout.imageLayoutVersion, '1.0.0')
    const index = JSON.parse(await readFile(join(a.dir, 'index.json'), 'utf8'))
    assert.equal(index.manifests[0].digest, a.manifestDigest)
    assert.equal(index.manifests[0].annotations['org.opencontainers.image.ref.name'], 'v1')
    const names = await readdir(join(a.dir, 'blobs', 'sha256'))
    assert.equal(names.length, 6, names.join(' '))
    for (const name of names) {
      assert.equal(sha256(await blob(a.dir, name)), `sha256:${name}`)
    }
  })

  it('has a config whose diff_ids are the sha256 of the uncompressed layers', async () => {
    const manifest = JSON.parse((await blob(a.dir, a.manifestDigest)).toString('utf8'))
    assert.equal(manifest.schemaVersion, 2)
    assert.equal(manifest.mediaType, 'application/vnd.oci.image.manifest.v1+json')
    const config = JSON.parse((await blob(a.dir, manifest.config.digest)).toString('utf8'))
    assert.equal(config.os, 'linux')
    assert.equal(
      config.architecture,
      { x64: 'amd64', arm64: 'arm64' }[process.arch as string] ?? process.arch
    )
    assert.equal(config.history.length, 4)
    assert.equal(config.rootfs.diff_ids.length, 4)
    for (const [i, layer] of manifest.layers.entries()) {
      assert.equal(layer.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip')
      assert.equal(config.rootfs.diff_ids[i], sha256(gunzipSync(await blob(a.dir, layer.digest))))
    }
  })

  it('reuses a directory that already holds the image, and repairs a damaged one', async () => {
    const dir = join(root, 'a')
    const before = (await stat(join(dir, 'index.json'))).mtimeMs
    const again = await writeDemoImage(dir)
    assert.deepEqual(again, a)
    assert.equal((await stat(join(dir, 'index.json'))).mtimeMs, before)

    const victim = a.layers[0]
    assert.ok(victim)
    await rm(join(dir, 'blobs', 'sha256', victim.digest.slice(7)))
    const repaired = await writeDemoImage(dir)
    assert.equal(repaired.manifestDigest, a.manifestDigest)
    assert.equal(sha256(await blob(dir, victim.digest)), victim.digest)
  })

  it('is accepted by skopeo (copy verifies every blob) and unpacked by umoci with the whiteout applied', async () => {
    const raw = await run('skopeo', ['inspect', '--raw', `oci:${a.dir}:v1`], { encoding: 'buffer' })
    assert.equal(sha256(raw.stdout), a.manifestDigest)
    const out = join(root, 'copy')
    await run('skopeo', ['copy', '--quiet', `oci:${a.dir}:v1`, `dir:${out}`])
    for (const l of a.layers) {
      assert.equal((await stat(join(out, l.digest.slice(7)))).size, l.size)
    }
    const bundle = join(root, 'bundle')
    await run('umoci', ['unpack', '--rootless', '--image', `${a.dir}:v1`, bundle])
    const etc = await readdir(join(bundle, 'rootfs', 'etc'))
    assert.ok(etc.includes('os-release'))
    assert.ok(!etc.includes('motd'), 'the whiteout layer deletes /etc/motd')
    assert.ok(!etc.some((n) => n.startsWith('.wh.')))
    const random = await stat(join(bundle, 'rootfs', 'opt', 'demo', 'random.bin'))
    assert.equal(random.size, 24 * 1024 * 1024)
  })
})
