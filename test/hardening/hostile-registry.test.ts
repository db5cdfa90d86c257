/**
 * A real agent seeded from a hostile registry (an OCI layout the test writes): malformed and
 * lying manifests and indexes, blobs that do not match what names them, and layers built to
 * escape the directory they are extracted into. Every pull and materialize must end in a typed
 * error, nothing may be written outside the agent's directories, and the agent must go on
 * serving a good image afterwards.
 */
import assert from 'node:assert/strict'
import { lstat, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { gzipSync } from 'node:zlib'
import { streamAgent } from '../../src/cli/socket-client.ts'
import { digestOf } from '../../src/content/digest.ts'
import { OCI_INDEX, OCI_MANIFEST } from '../../src/oci/media-types.ts'
import { processAlive, pullDone, removeAgentDir, startAgent, type TestAgent } from '../harness/agent.ts'
import { type TarSpec, tarOf } from '../unit/materialize/tars.ts'
import { type LayoutDescriptor, TestLayout } from './hostile/layout.ts'
import { tally } from './tally.ts'

const SEED = 'hostile.shoal.test'
const HEX = 'e'.repeat(64)

interface End {
  type: string
  code?: string
}

/** Streams a pull or materialize and returns its last event. */
async function lastEvent(agent: TestAgent, path: string, body: unknown): Promise<End> {
  let last: End | undefined
  for await (const e of streamAgent<End>(agent.socket, path, body)) last = e
  assert.ok(last, 'no event at all')
  return last
}

/** True while the process runs; a dead one is counted as an unexpected crash. */
function alive(pid: number): boolean {
  if (processAlive(pid)) return true
  tally('unexpected crashes', 1, import.meta.url)
  return false
}

describe('a hostile registry', { timeout: 180_000 }, () => {
  let dir: string
  let canary: string
  let agent: TestAgent
  const layout = new TestLayout()
  const file = (name: string, data = 'x'): TarSpec => ({ header: { name, type: 'file', mode: 0o644 }, data })
  const layer = async (entries: TarSpec[]) => layout.blob(gzipSync(await tarOf(entries)))
  /** Manifests and indexes: tag, bytes or object, and the code the pull must end with. */
  const manifests: [string, string][] = []
  /** Images whose layers must not be extracted: tag and the code. */
  const layers: [string, string][] = []

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-hostile-registry-'))
    // Every escape below aims here; only `victim` may exist, unchanged, at the end.
    canary = await mkdtemp(join(tmpdir(), 'shoal-canary-'))
    await writeFile(join(canary, 'victim'), 'untouched')
    const good = await layer([file('etc/motd', 'hello')])
    layout.image('good', [good])

    const descriptor = (over: Partial<LayoutDescriptor>) => ({ ...good, ...over })
    const image = (tag: string, bytes: Uint8Array | object, code: string, mediaType?: string) => {
      layout.tag(tag, bytes, mediaType)
      manifests.push([tag, code])
    }
    const config = layout.blob(Buffer.from('{}'), 'application/vnd.oci.image.config.v1+json')
    image('truncated', Buffer.from('{"schemaVersion":2,"config":'), 'INVALID_MANIFEST')
    image('array', Buffer.from('[1,2,3]'), 'INVALID_MANIFEST')
    image('not-utf8', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), 'INVALID_MANIFEST')
    image('deep', Buffer.from(`${'['.repeat(1_000_000)}${']'.repeat(1_000_000)}`), 'INVALID_MANIFEST')
    image('schema1', { schemaVersion: 1, name: 'x', tag: 'y', fsLayers: [] }, 'UNSUPPORTED_MEDIA_TYPE')
    image(
      'proto',
      Buffer.from(`{"__proto__":{"schemaVersion":2},"config":${JSON.stringify(config)},"layers":[]}`),
      'INVALID_MANIFEST'
    )
    image(
      'bad-digest',
      { schemaVersion: 2, config, layers: [descriptor({ digest: 'sha256:../../etc' })] },
      'INVALID_MANIFEST'
    )
    image(
      'md5-digest',
      { schemaVersion: 2, config, layers: [descriptor({ digest: `md5:${HEX.slice(0, 32)}` })] },
      'INVALID_MANIFEST'
    )
    image(
      'negative-size',
      { schemaVersion: 2, config, layers: [descriptor({ size: -1 })] },
      'INVALID_MANIFEST'
    )
    image(
      'huge-size',
      { schemaVersion: 2, config, layers: [descriptor({ size: 2 ** 53 })] },
      'INVALID_MANIFEST'
    )
    image('float-size', { schemaVersion: 2, config, layers: [descriptor({ size: 1.5 })] }, 'INVALID_MANIFEST')
    image(
      'missing-layer',
      { schemaVersion: 2, config, layers: [descriptor({ digest: `sha256:${HEX}` })] },
      'UPSTREAM_NOT_FOUND'
    )
    image(
      'short-size',
      { schemaVersion: 2, config, layers: [descriptor({ size: good.size - 1 })] },
      'SIZE_MISMATCH'
    )
    image(
      'long-size',
      { schemaVersion: 2, config, layers: [descriptor({ size: good.size + 4096 })] },
      'SIZE_MISMATCH'
    )
    image(
      'many-layers',
      {
        schemaVersion: 2,
        config,
        layers: Array.from({ length: 3000 }, (_, i) =>
          descriptor({ digest: digestOf(Buffer.from(String(i))), size: 10 })
        )
      },
      'INVALID_MANIFEST'
    )
    image('over-4MiB', Buffer.alloc(5 * 1024 * 1024, 0x20), 'UPSTREAM_PROTOCOL')
    const manifest = layout.blob(
      Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers: [good] })),
      OCI_MANIFEST
    )
    image(
      'no-platform',
      { schemaVersion: 2, manifests: [{ ...manifest, platform: { os: 'plan9', architecture: 'mips' } }] },
      'NO_MATCHING_PLATFORM',
      OCI_INDEX
    )
    const inner = layout.blob(
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: OCI_INDEX,
          manifests: [{ ...manifest, platform: { os: 'linux', architecture: 'amd64' } }]
        })
      ),
      OCI_INDEX
    )
    image(
      'nested-index',
      {
        schemaVersion: 2,
        manifests: [{ ...inner, platform: { os: 'linux', architecture: 'amd64' } }]
      },
      'INVALID_MANIFEST',
      OCI_INDEX
    )
    // A blob the registry serves under a digest it does not hash to.
    const liar = layout.blob(gzipSync(Buffer.from('the real bytes')))
    layout.image('corrupt-layer', [liar])
    manifests.push(['corrupt-layer', 'DIGEST_MISMATCH'])

    // Layers that try to get out of their directory: they pull (they are just bytes), they must
    // not materialize.
    const hostile = async (tag: string, entries: TarSpec[] | Buffer) => {
      // A Buffer is the layer blob itself, compressed or not as it is.
      const bytes = Buffer.isBuffer(entries) ? entries : gzipSync(await tarOf(entries))
      layout.image(tag, [layout.blob(bytes)])
      layers.push([tag, 'LAYER_UNSAFE'])
    }
    const up = '../'.repeat(12)
    await hostile('dotdot', [file(`${up}${canary.slice(1)}/escaped`)])
    await hostile('absolute', [file(join(canary, 'absolute'))])
    await hostile('symlink-then-file', [
      { header: { name: 'out', type: 'symlink', linkname: canary } },
      file('out/through-symlink')
    ])
    await hostile('symlink-dir-then-file', [
      { header: { name: 'a', type: 'directory', mode: 0o755 } },
      { header: { name: 'a/up', type: 'symlink', linkname: '../..' } },
      file(`a/up/${up}${canary.slice(1)}/through-relative-symlink`)
    ])
    await hostile('hardlink-absolute', [
      { header: { name: 'h', type: 'link', linkname: join(canary, 'victim') } }
    ])
    await hostile('hardlink-dotdot', [
      { header: { name: 'h', type: 'link', linkname: `${up}${canary.slice(1)}/victim` } }
    ])
    await hostile('hardlink-through-symlink', [
      { header: { name: 'c', type: 'symlink', linkname: canary } },
      { header: { name: 'h', type: 'link', linkname: 'c/victim' } }
    ])
    await hostile('pax-path-escape', [
      { header: { name: 'innocent', type: 'file', pax: { path: `${up}${canary.slice(1)}/pax` } }, data: 'x' }
    ])
    await hostile('gnu-longname-escape', [file(`${'d/'.repeat(60)}${up}${up}${up}${canary.slice(1)}/long`)])
    await hostile('pax-header-8MiB', [
      { header: { name: 'big', type: 'file', pax: { comment: 'x'.repeat(8 * 1024 * 1024) } }, data: 'x' }
    ])
    await hostile('name-over-PATH_MAX', [
      { header: { name: 'n', type: 'file', pax: { path: `${'d/'.repeat(2100)}f` } }, data: 'x' }
    ])
    await hostile('component-over-NAME_MAX', [
      { header: { name: 'n', type: 'file', pax: { path: `${'c'.repeat(300)}` } }, data: 'x' }
    ])
    await hostile('whiteout-escape', [file(`a/.wh.${up}${canary.slice(1)}/victim`, '')])
    await hostile('xattr-outside-namespaces', [
      { header: { name: 'x', type: 'file', pax: { 'SCHILY.xattr.bogus': 'v' } }, data: 'x' }
    ])
    await hostile('xattr-value-100KiB', [
      {
        header: { name: 'x', type: 'file', pax: { 'SCHILY.xattr.user.v': 'v'.repeat(100 * 1024) } },
        data: 'x'
      }
    ])
    // A zstd frame declaring 2 GB of content, made of RLE blocks (61 KB in all).
    const zstd = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0, 0x94, 0x35, 0x77])]
    for (let left = 2_000_000_000; left > 0; left -= 131072) {
      const h = (Math.min(131072, left) << 3) | 2 | (left <= 131072 ? 1 : 0)
      zstd.push(Buffer.from([h & 0xff, (h >> 8) & 0xff, (h >> 16) & 0xff, 0]))
    }
    await hostile('zstd-window-2GB', Buffer.concat(zstd))

    await layout.write(join(dir, 'layout'))
    // The blob the liar descriptor names gets other bytes of the same length.
    const liarPath = join(dir, 'layout', 'blobs', 'sha256', liar.digest.slice(7))
    const bytes = await readFile(liarPath)
    bytes[bytes.length - 5] = (bytes[bytes.length - 5] as number) ^ 0xff
    await writeFile(liarPath, bytes)

    agent = await startAgent({ registries: { [SEED]: { layout: join(dir, 'layout') } } })
  })

  after(async () => {
    await agent?.stop()
    if (agent) await removeAgentDir(agent)
    await rm(dir, { recursive: true, force: true })
    await rm(canary, { recursive: true, force: true })
  })

  it('every hostile manifest or index ends its pull in a typed error, and the agent stays up', async () => {
    const got: [string, string][] = []
    for (const [tag] of manifests) {
      const end = await lastEvent(agent, '/v1/pull', { reference: `${SEED}/shoal/hostile:${tag}` })
      got.push([tag, end.type === 'error' ? (end.code ?? '?') : end.type])
    }
    tally('hostile inputs tried', manifests.length, import.meta.url)
    assert.deepEqual(got, manifests)
    assert.ok(alive(agent.pid))
    await pullDone(agent, `${SEED}/shoal/hostile:good`)
  })

  it('the mirror serves or refuses them without falling over', async () => {
    for (const [tag] of [...manifests, ...layers]) {
      const res = await fetch(`http://${agent.mirror}/v2/shoal/hostile/manifests/${tag}?ns=${SEED}`)
      await res.arrayBuffer()
      // Manifests go to the runtime verbatim (their digest vouches for them); an error is typed.
      if (res.status !== 200) assert.notEqual(res.status, 500, tag)
    }
    tally('hostile inputs tried', manifests.length + layers.length, import.meta.url)
    assert.ok(alive(agent.pid))
  })

  it('no hostile layer is extracted, and nothing is written outside the layer directory', async () => {
    const got: [string, string][] = []
    for (const [tag] of layers) {
      const end = await lastEvent(agent, '/v1/materialize', { reference: `${SEED}/shoal/hostile:${tag}` })
      got.push([tag, end.type === 'error' ? (end.code ?? '?') : end.type])
    }
    tally('hostile inputs tried', layers.length, import.meta.url)
    assert.deepEqual(got, layers)
    assert.deepEqual(await readdir(canary), ['victim'])
    assert.equal(await readFile(join(canary, 'victim'), 'utf8'), 'untouched')
    assert.equal((await lstat(join(canary, 'victim'))).nlink, 1, 'a hard link to the victim was made')
    // Nothing half-extracted is left behind either.
    const cache = join(agent.storeDir, 'materialize')
    const left = (await readdir(cache, { recursive: true }).catch(() => [])).filter((p) =>
      p.includes('.tmp-')
    )
    assert.deepEqual(left, [])
    // The agent still lays out a good image.
    const ok = await lastEvent(agent, '/v1/materialize', { reference: `${SEED}/shoal/hostile:good` })
    assert.equal(ok.type, 'done', JSON.stringify(ok))
    assert.ok(alive(agent.pid))
    tally('unexpected crashes', 0, import.meta.url)
  })
})
