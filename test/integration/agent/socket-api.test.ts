import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { callAgent, streamAgent } from '../../../src/cli/socket-client.ts'
import { digestOf } from '../../../src/content/digest.ts'
import { writeDemoImage } from '../../../src/demo/seed-image.ts'
import type { PullEvent } from '../../../src/fetch/image-puller.ts'
import { removeAgentDir, startAgent, type TestAgent } from '../../harness/agent.ts'

const MAIN = fileURLToPath(new URL('../../../src/cli/main.ts', import.meta.url))
const SEED = 'seed.shoal.test'

function getBlob(socket: string, path: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }>(
    (resolve, reject) => {
      const req = request({ socketPath: socket, path, headers }, (res) => {
        const parts: Buffer[] = []
        res.on('data', (d) => parts.push(d))
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) })
        )
      })
      req.on('error', reject)
      req.end()
    }
  )
}

// A real agent process seeded from an OCI image layout, driven through its unix socket and CLI.
describe('socket API and CLI (real agent, OCI layout seed)', () => {
  let dir: string
  let agent: TestAgent
  let image: Awaited<ReturnType<typeof writeDemoImage>>
  let ref: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sh-sock-'))
    image = await writeDemoImage(join(dir, 'seed'))
    ref = `${SEED}/${image.repository}:${image.tag}`
    agent = await startAgent({
      registries: { [SEED]: { layout: image.dir } },
      config: { store: { pieceSize: '1MiB' } }
    })
  })
  after(async () => {
    await agent?.stop()
    if (agent) await removeAgentDir(agent)
    await rm(dir, { recursive: true, force: true })
  })

  it('serves a range of a blob it does not hold yet, then the whole blob verified', async () => {
    const big = [...image.layers].sort((a, b) => b.size - a.size)[0]
    assert.ok(big && big.size > 8 * 1024 * 1024)
    const start = 5 * 1024 * 1024 + 17
    const res = await getBlob(agent.socket, `/v1/blobs/${big.digest}?ref=${SEED}/${image.repository}`, {
      range: `bytes=${start}-${start + 99}`
    })
    assert.equal(res.status, 206)
    assert.equal(res.body.length, 100)
    assert.equal(res.headers['content-range'], `bytes ${start}-${start + 99}/${big.size}`)
    // (That the covering pieces come first is shown by the BlobFetcher unit tests with a slow
    // seed; a local layout is too fast to catch the blob half-way here.)
    // The whole blob, asked for next, arrives complete and verified; the range was its bytes.
    const whole = await getBlob(agent.socket, `/v1/blobs/${big.digest}?ref=${SEED}/${image.repository}`)
    assert.equal(whole.status, 200)
    assert.equal(digestOf(whole.body), big.digest)
    assert.deepEqual(whole.body.subarray(start, start + 100), res.body)
  })

  it('pulls with NDJSON progress and says where every byte came from', async () => {
    const events: PullEvent[] = []
    for await (const e of streamAgent<PullEvent>(agent.socket, '/v1/pull', { reference: ref })) events.push(e)
    const resolved = events.find((e) => e.type === 'resolved')
    const done = events.at(-1)
    assert.ok(resolved && resolved.type === 'resolved')
    assert.equal(resolved.manifestDigest, image.manifestDigest)
    assert.deepEqual(
      resolved.blobs.filter((b) => b.kind === 'layer').map((b) => b.digest),
      image.layers.map((l) => l.digest)
    )
    assert.ok(events.some((e) => e.type === 'progress'))
    assert.equal(events.filter((e) => e.type === 'blob-done').length, image.layers.length + 1)
    assert.ok(done && done.type === 'done')
    const total = Object.values(done.bytes).reduce((n, v) => n + (v ?? 0), 0)
    assert.equal(total, done.totalBytes)
    assert.ok((done.bytes['oci-layout'] ?? 0) > 0)
  })

  it('a second pull takes everything from the local store', async () => {
    const events: PullEvent[] = []
    for await (const e of streamAgent<PullEvent>(agent.socket, '/v1/pull', { reference: ref })) events.push(e)
    const done = events.at(-1)
    assert.ok(done && done.type === 'done')
    assert.equal(done.bytes.local, done.totalBytes)
    assert.equal(done.bytes['oci-layout'] ?? 0, 0)
  })

  it('shoal pull and shoal status work from the command line', () => {
    const pull = spawnSync(
      process.execPath,
      ['--import', 'tsx', MAIN, 'pull', '--socket', agent.socket, ref],
      {
        encoding: 'utf8'
      }
    )
    assert.equal(pull.status, 0, pull.stderr)
    assert.match(pull.stdout, new RegExp(image.manifestDigest))
    assert.match(pull.stdout, /already in the local store/)
    const status = spawnSync(
      process.execPath,
      ['--import', 'tsx', MAIN, 'status', '--json', '--socket', agent.socket],
      {
        encoding: 'utf8'
      }
    )
    assert.equal(status.status, 0, status.stderr)
    const s = JSON.parse(status.stdout) as { store: { completeBlobs: number } }
    assert.ok(s.store.completeBlobs >= image.layers.length + 1)
  })

  it('rejects bad input with a typed error and stays up', async () => {
    const bad = spawnSync(
      process.execPath,
      ['--import', 'tsx', MAIN, 'pull', '--socket', agent.socket, 'Not/A:Ref!'],
      {
        encoding: 'utf8'
      }
    )
    assert.notEqual(bad.status, 0)
    assert.match(bad.stderr, /INVALID_REFERENCE/)
    await assert.rejects(callAgent(agent.socket, 'POST', '/v1/pull', { nope: 1 }), { code: 'BAD_REQUEST' })
    await assert.rejects(callAgent(agent.socket, 'GET', '/v1/blobs/sha256:1234'), { code: 'INVALID_DIGEST' })
    await assert.rejects(callAgent(agent.socket, 'GET', '/v1/nothing'), { code: 'NOT_FOUND' })
    const missing: PullEvent[] = []
    for await (const e of streamAgent<PullEvent>(agent.socket, '/v1/pull', {
      reference: `${SEED}/shoal/none:v9`
    })) {
      missing.push(e)
    }
    assert.deepEqual(
      missing.map((e) => (e as { type: string; code?: string }).code),
      ['UPSTREAM_NOT_FOUND']
    )
    assert.deepEqual(await callAgent(agent.socket, 'GET', '/v1/health'), { status: 'ok' })
  })
})
