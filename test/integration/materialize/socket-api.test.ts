import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import type { HeldMaterialization, MaterializeEvent } from '../../../src/api/materialize-routes.ts'
import { callAgent, streamAgent } from '../../../src/cli/socket-client.ts'
import { digestOf } from '../../../src/content/digest.ts'
import { removeAgentDir, startAgent, type TestAgent } from '../../harness/agent.ts'
import { buildTestImages, type PushedImage, type PushedImages, pushTestImages } from '../../harness/images.ts'
import { startRegistry, type TestRegistry } from '../../harness/registry.ts'
import { assertSameTree, tree, umociTree } from '../../harness/tree.ts'

const run = promisify(execFile)
const MAIN = fileURLToPath(new URL('../../../src/cli/main.ts', import.meta.url))
const IS_ROOT = process.getuid?.() === 0

interface Status {
  materializer: string
  materializations: HeldMaterialization[]
}

/**
 * Materializes and waits for the agent's `materialized` log line: its log reaches this process
 * through a pipe, later than the answer on the socket, and every `layer extracted` line of the
 * request comes before that one.
 */
async function materialize(agent: TestAgent, body: Record<string, unknown>): Promise<MaterializeEvent[]> {
  const before = logLines(agent, 'materialized').length
  const events: MaterializeEvent[] = []
  for await (const e of streamAgent<MaterializeEvent>(agent.socket, '/v1/materialize', body)) events.push(e)
  if (events.at(-1)?.type === 'done') {
    for (let i = 0; logLines(agent, 'materialized').length <= before; i++) {
      assert.ok(i < 250, 'the agent logged no "materialized" line')
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  return events
}

/** The agent's JSON log lines with this message. */
function logLines(agent: TestAgent, msg: string): { msg?: string; digest?: string }[] {
  return agent
    .logs()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg?: string; digest?: string })
    .filter((l) => l.msg === msg)
}

function doneOf(events: MaterializeEvent[]): HeldMaterialization {
  const last = events.at(-1)
  assert.ok(last?.type === 'done', `no done event: ${JSON.stringify(events.at(-1))}`)
  return last
}

function lowerdirsOf(held: HeldMaterialization): string[] {
  const { mount } = held.materialization
  assert.equal(mount.type, 'overlay')
  return mount.type === 'overlay' ? mount.lowerdirs : []
}

/** Digests of the layers the agent extracted, one entry per extraction, from its JSON log. */
function extractions(agent: TestAgent): string[] {
  return logLines(agent, 'layer extracted').map((l) => l.digest ?? '')
}

function count(list: string[], item: string): number {
  return list.filter((x) => x === item).length
}

async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined)) !== undefined
}

/**
 * Runs the CLI without blocking this process: the registry's counting proxy lives here, and a
 * synchronous spawn would stall it under the agent.
 */
async function cli(...args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['--import', 'tsx', MAIN, ...args])
    return { status: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string }
    return { status: e.code ?? 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }
  }
}

// A real agent process, the real registry, skopeo-pushed test images, a real overlay mount.
describe('materialize and release through the socket API', { skip: IS_ROOT ? false : 'needs root' }, () => {
  let registry: TestRegistry
  let pushed: PushedImages
  let agent: TestAgent
  let work: string

  const image = (name: string): PushedImage => {
    const i = pushed[name]
    assert.ok(i, `no test image ${name}`)
    return i
  }

  before(async () => {
    const images = await buildTestImages()
    registry = await startRegistry()
    pushed = await pushTestImages(registry.host, images)
    agent = await startAgent({ registries: { [registry.host]: { url: registry.url } } })
    work = await mkdtemp(join(tmpdir(), 'sh-mat-'))
  })
  after(async () => {
    await agent?.stop()
    if (agent) await removeAgentDir(agent)
    await registry?.stop()
    if (work) await rm(work, { recursive: true, force: true })
  })

  it('pulls a multi-layer image with whiteouts and lays it out as the image is', async () => {
    const whiteout = image('whiteout')
    const digests = whiteout.layers.map((l) => l.digest)
    assert.equal(digests.length, 3)
    const events = await materialize(agent, { reference: whiteout.ref })
    const types = events.map((e) => e.type)
    assert.equal(types[0], 'resolved')
    assert.ok(types.includes('blob-done'))
    const pulled = types.indexOf('pulled')
    assert.ok(pulled > 0, types.join(' '))
    // Every layer is complete in the store before any is laid out.
    assert.ok(types.slice(0, pulled).every((t) => t !== 'layer'))
    const layerEvents = events.filter((e) => e.type === 'layer')
    assert.deepEqual(
      layerEvents.map((e) => [e.done, e.total]),
      [
        [1, 3],
        [2, 3],
        [3, 3]
      ]
    )
    assert.deepEqual(new Set(layerEvents.map((e) => e.digest)), new Set(digests))

    const held = doneOf(events)
    assert.equal(held.reference, whiteout.ref)
    assert.equal(held.manifestDigest, whiteout.manifestDigest)
    assert.equal(held.refs, 1)
    assert.equal(held.materialization.driver, 'local-cache')
    assert.deepEqual(
      held.materialization.layers.map((l) => l.digest),
      digests,
      'layers bottom first'
    )
    const lowerdirs = lowerdirsOf(held)
    assert.deepEqual(
      lowerdirs,
      held.materialization.layers.map((l) => l.path).reverse(),
      'lowerdirs top first'
    )
    for (const dir of lowerdirs) assert.ok(dir.startsWith(join(agent.storeDir, 'materialize')), dir)
    assert.deepEqual(extractions(agent).sort(), [...digests].sort())

    // The mount a runtime would make, compared with what umoci unpacks from the same layout.
    const mnt = join(work, 'whiteout')
    const merged = join(mnt, 'merged')
    await Promise.all(['merged', 'upper', 'work'].map((d) => mkdir(join(mnt, d), { recursive: true })))
    const opts = `lowerdir=${lowerdirs.join(':')},upperdir=${join(mnt, 'upper')},workdir=${join(mnt, 'work')}`
    await run('mount', ['-t', 'overlay', 'overlay', '-o', opts, merged])
    try {
      const bundle = join(mnt, 'bundle')
      const expected = await umociTree(whiteout, bundle)
      const actual = await tree(merged)
      assertSameTree(actual, expected)
      assert.ok(!actual.has('data/gone.txt'), 'the whiteout hides the file')
      assert.equal(await readFile(join(merged, 'data/keep.txt'), 'utf8'), 'keep\n')
      assert.deepEqual(await readdir(join(merged, 'data/olddir')), ['z'], 'the opaque dir hides x and y')
      assert.equal(await readFile(join(merged, 'etc/image-name'), 'utf8'), 'whiteout\n')
    } finally {
      await run('umount', [merged])
    }
  })

  it('a second materialize extracts nothing and takes a second reference', async () => {
    const whiteout = image('whiteout')
    const before = extractions(agent)
    const held = doneOf(await materialize(agent, { reference: whiteout.ref }))
    assert.equal(held.refs, 2)
    assert.deepEqual(extractions(agent), before, 'no layer extracted again')
    const status = await callAgent<Status>(agent.socket, 'GET', '/v1/status')
    assert.equal(status.materializer, 'local-cache')
    const listed = status.materializations.filter((m) => m.reference === whiteout.ref)
    assert.equal(listed.length, 1)
    assert.equal(listed[0]?.refs, 2)
    assert.deepEqual(listed[0]?.materialization, held.materialization)
  })

  it('released twice, the layers stay until a prune removes them', async () => {
    const whiteout = image('whiteout')
    const dirs = whiteout.layers.map((l) => join(agent.storeDir, 'materialize', 'layers', l.digest.slice(7)))
    const first = await callAgent<{ refs: number }>(agent.socket, 'POST', '/v1/release', {
      reference: whiteout.ref
    })
    assert.equal(first.refs, 1)
    assert.deepEqual(await callAgent(agent.socket, 'POST', '/v1/prune'), { removed: [] }, 'still held')
    const second = await callAgent<{ refs: number; manifestDigest: string }>(
      agent.socket,
      'POST',
      '/v1/release',
      {
        reference: whiteout.ref
      }
    )
    assert.equal(second.refs, 0)
    assert.equal(second.manifestDigest, whiteout.manifestDigest)
    const status = await callAgent<Status>(agent.socket, 'GET', '/v1/status')
    assert.ok(!status.materializations.some((m) => m.reference === whiteout.ref))
    for (const d of dirs) assert.ok(await exists(d), `${d} kept until a prune`)
    await assert.rejects(callAgent(agent.socket, 'POST', '/v1/release', { reference: whiteout.ref }), {
      code: 'NOT_MATERIALIZED'
    })
    const { removed } = await callAgent<{ removed: string[] }>(agent.socket, 'POST', '/v1/prune')
    assert.deepEqual(removed.sort(), whiteout.layers.map((l) => l.digest).sort())
    for (const d of dirs) assert.ok(!(await exists(d)), `${d} pruned`)
  })

  it('shares the layers two images have in common and prunes only what neither holds', async () => {
    const v1 = image('multi:v1')
    const v2 = image('multi:v2')
    const shared = v1.layers.slice(0, 4).map((l) => l.digest)
    assert.deepEqual(
      v2.layers.slice(0, 4).map((l) => l.digest),
      shared
    )
    const top1 = v1.layers[4]?.digest ?? ''
    const top2 = v2.layers[4]?.digest ?? ''
    doneOf(await materialize(agent, { reference: v1.ref }))
    const before = extractions(agent)
    doneOf(await materialize(agent, { reference: v2.ref }))
    assert.deepEqual(extractions(agent).slice(before.length), [top2], 'only the layer v1 lacks')
    await callAgent(agent.socket, 'POST', '/v1/release', { reference: v1.ref })
    const { removed } = await callAgent<{ removed: string[] }>(agent.socket, 'POST', '/v1/prune')
    assert.deepEqual(removed, [top1])
    await callAgent(agent.socket, 'POST', '/v1/release', { reference: v2.ref })
    const rest = await callAgent<{ removed: string[] }>(agent.socket, 'POST', '/v1/prune')
    assert.deepEqual(rest.removed.sort(), [...shared, top2].sort())
    for (const d of [...shared, top1, top2]) assert.equal(count(extractions(agent), d), 1)
  })

  it('materializes one layer, from the store or fetched from where "ref" says', async () => {
    const tiny = image('tiny')
    const digest = tiny.layers[0]?.digest ?? ''
    // Not in the store yet: the agent fetches it from the registry first.
    const events = await materialize(agent, {
      layer: digest,
      ref: `${registry.host}/${tiny.repository}`
    })
    assert.ok(events.some((e) => e.type === 'progress' && e.digest === digest))
    const held = doneOf(events)
    assert.equal(held.layer, digest)
    assert.equal(held.refs, 1)
    const [dir] = lowerdirsOf(held)
    assert.ok(dir)
    assert.equal(await readFile(join(dir, 'etc/hello.txt'), 'utf8'), 'hello from the tiny test image\n')
    // Now in the store: no ref needed.
    const again = doneOf(await materialize(agent, { layer: digest }))
    assert.equal(again.refs, 2)
    assert.equal(count(extractions(agent), digest), 1)
    const status = await callAgent<Status>(agent.socket, 'GET', '/v1/status')
    assert.equal(status.materializations.find((m) => m.layer === digest)?.refs, 2)
    for (const left of [1, 0]) {
      const r = await callAgent<{ refs: number }>(agent.socket, 'POST', '/v1/release', { layer: digest })
      assert.equal(r.refs, left)
    }
    assert.deepEqual(await callAgent(agent.socket, 'POST', '/v1/prune'), { removed: [digest] })
  })

  it('rejects bad input with typed errors and stays up', async () => {
    const missing = await materialize(agent, { reference: `${registry.host}/test/none:v9` })
    assert.deepEqual(
      missing.map((e) => (e.type === 'error' ? e.code : e.type)),
      ['UPSTREAM_NOT_FOUND']
    )
    const post = (path: string, body: unknown) => callAgent(agent.socket, 'POST', path, body)
    await assert.rejects(post('/v1/materialize', { layer: 'sha256:1234' }), { code: 'INVALID_DIGEST' })
    await assert.rejects(post('/v1/materialize', { layer: 'md5:abcd' }), { code: 'INVALID_DIGEST' })
    const absent = digestOf(new Uint8Array(randomBytes(32)))
    await assert.rejects(post('/v1/materialize', { layer: absent }), { code: 'BLOB_UNKNOWN' })
    await assert.rejects(post('/v1/materialize', { reference: 'Not/A:Ref!' }), { code: 'INVALID_REFERENCE' })
    await assert.rejects(post('/v1/materialize', {}), { code: 'BAD_REQUEST' })
    await assert.rejects(post('/v1/materialize', { reference: image('tiny').ref, layer: absent }), {
      code: 'BAD_REQUEST'
    })
    await assert.rejects(post('/v1/materialize', [1]), { code: 'BAD_REQUEST' })
    await assert.rejects(post('/v1/release', { layer: absent }), { code: 'NOT_MATERIALIZED' })
    await assert.rejects(post('/v1/release', { layer: 'nope' }), { code: 'INVALID_DIGEST' })
    await assert.rejects(post('/v1/release', { reference: image('tiny').ref }), { code: 'NOT_MATERIALIZED' })
    // A layer blob that is not a tar: refused, nothing left behind.
    const config = image('tiny').config.digest
    const events = await materialize(agent, { layer: config, ref: `${registry.host}/test/tiny` })
    assert.deepEqual(
      events.filter((e) => e.type === 'error').map((e) => (e.type === 'error' ? e.code : '')),
      ['LAYER_UNSAFE']
    )
    const status = await callAgent<Status>(agent.socket, 'GET', '/v1/status')
    assert.deepEqual(status.materializations, [])
    assert.deepEqual(await callAgent(agent.socket, 'GET', '/v1/health'), { status: 'ok' })
  })

  it('shoal materialize, release and prune work from the command line', async () => {
    const tiny = image('tiny')
    const m = await cli('materialize', '--socket', agent.socket, tiny.ref)
    assert.equal(m.status, 0, m.stderr)
    assert.match(m.stdout, new RegExp(tiny.manifestDigest))
    assert.match(m.stdout, /ready \(1\/1\)/)
    assert.match(m.stdout, /overlay lowerdir=\/\S+/)
    const j = await cli('materialize', '--json', '--socket', agent.socket, tiny.ref)
    assert.equal(j.status, 0, j.stderr)
    const held = JSON.parse(j.stdout) as HeldMaterialization
    assert.equal(held.refs, 2)
    assert.match(m.stdout, new RegExp(`lowerdir=${lowerdirsOf(held).join(':')}`))
    const r1 = await cli('release', '--socket', agent.socket, tiny.ref)
    assert.equal(r1.status, 0, r1.stderr)
    assert.match(r1.stdout, /1 left/)
    const r2 = await cli('release', '--socket', agent.socket, tiny.ref)
    assert.match(r2.stdout, /no references left/)
    const p = await cli('prune', '--json', '--socket', agent.socket)
    assert.equal(p.status, 0, p.stderr)
    assert.deepEqual(JSON.parse(p.stdout), { removed: tiny.layers.map((l) => l.digest) })
    const bad = await cli('materialize', '--socket', agent.socket, 'sha256:1234')
    assert.notEqual(bad.status, 0)
    assert.match(bad.stderr, /INVALID_DIGEST/)
    const none = await cli('release', '--socket', agent.socket, tiny.ref)
    assert.notEqual(none.status, 0)
    assert.match(none.stderr, /NOT_MATERIALIZED/)
  })

  it('an agent configured for LVM thin refuses to start without device-mapper, and without a volume group', async () => {
    // This host's kernel has no device-mapper (the LVM tests run in a UML guest for that reason).
    await assert.rejects(
      startAgent({
        registries: { [registry.host]: { url: registry.url } },
        config: { materialize: { driver: 'lvm-thin', lvm: { volumeGroup: 'shoal-none' } } }
      }),
      /DEVICE_MAPPER_MISSING: materialize\.driver is lvm-thin, but this kernel has no device-mapper/
    )
    await assert.rejects(
      startAgent({
        registries: { [registry.host]: { url: registry.url } },
        config: { materialize: { driver: 'lvm-thin' } }
      }),
      /CONFIG_INVALID: [\s\S]*materialize\.lvm: materialize\.driver lvm-thin needs materialize\.lvm\.volumeGroup/
    )
  })
})
