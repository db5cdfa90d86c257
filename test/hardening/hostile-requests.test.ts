/**
 * Malformed and hostile requests to a real agent's unix socket API and registry mirror: bad
 * JSON, oversized bodies, traversal in references, digests and repository names, broken
 * percent-encodings, bad ranges, garbage request lines and connections that never finish their
 * request. Each must be answered with a clean 4xx or 5xx carrying a typed code (never INTERNAL,
 * which means a bug), the agent must answer a good request right after, and nothing may appear
 * where the traversals point.
 */
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { connect, type NetConnectOpts, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { gzipSync } from 'node:zlib'
import { callAgent } from '../../src/cli/socket-client.ts'
import { processAlive, pullDone, removeAgentDir, startAgent, type TestAgent } from '../harness/agent.ts'
import { tarOf } from '../unit/materialize/tars.ts'
import { TestLayout } from './hostile/layout.ts'
import { errorCode, rawExchange, rawRequest } from './hostile/raw-http.ts'
import { scaled } from './scale.ts'
import { tally } from './tally.ts'

const SEED = 'seed.shoal.test'
const REPO = 'shoal/app'

/** A request and what must come back: the status and, when there is an error body, its code. */
interface Case {
  name: string
  bytes: Buffer
  status: number
  code?: string
  /** A reset connection (no answer read) is accepted too. */
  orReset?: boolean
}

/** True while the process runs; a dead one is counted as an unexpected crash. */
function alive(pid: number): boolean {
  if (processAlive(pid)) return true
  tally('unexpected crashes', 1, import.meta.url)
  return false
}

describe('hostile requests to a real agent', { timeout: 180_000 }, () => {
  let dir: string
  let canary: string
  let agent: TestAgent
  let layer: string
  let layerSize: number
  let socket: NetConnectOpts
  let mirror: NetConnectOpts

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-hostile-requests-'))
    canary = await mkdtemp(join(tmpdir(), 'shoal-canary-'))
    const layout = new TestLayout()
    const l = layout.blob(
      gzipSync(await tarOf([{ header: { name: 'f', type: 'file' }, data: 'x'.repeat(5000) }]))
    )
    layer = l.digest
    layerSize = l.size
    layout.image('v1', [l])
    await layout.write(join(dir, 'layout'))
    agent = await startAgent({ registries: { [SEED]: { layout: join(dir, 'layout') } } })
    await pullDone(agent, `${SEED}/${REPO}:v1`)
    socket = { path: agent.socket }
    const [host, port] = agent.mirror.split(':')
    mirror = { host, port: Number(port) }
  })

  after(async () => {
    await agent?.stop()
    if (agent) await removeAgentDir(agent)
    await rm(dir, { recursive: true, force: true })
    await rm(canary, { recursive: true, force: true })
  })

  /** Sends every case, checks each answer, then that the agent is whole. */
  async function send(at: NetConnectOpts, cases: Case[], healthy: () => Promise<void>) {
    const wrong: string[] = []
    for (const c of cases) {
      const res = await rawExchange(at, c.bytes)
      const code = errorCode(res.body)
      if (c.orReset && res.status === 0) continue
      if (res.status !== c.status || (c.code !== undefined && code !== c.code) || code === 'INTERNAL') {
        wrong.push(
          `${c.name}: ${res.status} ${code ?? res.body.slice(0, 120)} (want ${c.status} ${c.code ?? ''})`
        )
      }
    }
    tally('hostile inputs tried', cases.length, import.meta.url)
    assert.deepEqual(wrong, [])
    assert.ok(alive(agent.pid), 'the agent died')
    await healthy()
    assert.deepEqual(await readdir(canary), [], 'something was written where a traversal pointed')
  }

  const socketHealthy = async () => {
    assert.deepEqual(await callAgent(agent.socket, 'GET', '/v1/health'), { status: 'ok' })
    // ...and still serves the good blob, whole and verified.
    const res = await rawExchange(socket, rawRequest('GET', `/v1/blobs/${layer}`))
    assert.equal(res.status, 200)
    assert.equal(Buffer.byteLength(res.body, 'latin1'), layerSize)
  }

  const mirrorHealthy = async () => {
    const res = await fetch(`http://${agent.mirror}/v2/${REPO}/blobs/${layer}?ns=${SEED}`)
    assert.equal(res.status, 200)
    assert.equal((await res.arrayBuffer()).byteLength, layerSize)
  }

  it('the socket API answers every malformed request with a typed error', async () => {
    const up = '../'.repeat(10)
    const json = (body: unknown) => ({
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body)
    })
    const pull = (body: unknown) => rawRequest('POST', '/v1/pull', json(body))
    const post = (path: string, body: string) => rawRequest('POST', path, { body })
    const blob = (path: string, headers?: Record<string, string>) =>
      rawRequest('GET', `/v1/blobs/${path}`, { headers })
    const cases: Case[] = [
      { name: 'pull, not JSON', bytes: post('/v1/pull', '{"reference":'), status: 400, code: 'BAD_REQUEST' },
      { name: 'pull, a JSON array', bytes: post('/v1/pull', '[]'), status: 400, code: 'BAD_REQUEST' },
      { name: 'pull, a JSON string', bytes: post('/v1/pull', '"x"'), status: 400, code: 'BAD_REQUEST' },
      { name: 'pull, null', bytes: post('/v1/pull', 'null'), status: 400, code: 'BAD_REQUEST' },
      { name: 'pull, reference a number', bytes: pull({ reference: 5 }), status: 400, code: 'BAD_REQUEST' },
      {
        name: 'pull, 20 MB body',
        bytes: post('/v1/pull', 'x'.repeat(20 * 1024 * 1024)),
        status: 400,
        code: 'BAD_REQUEST',
        // The agent answers and closes while the body is still coming: the sender may see the
        // connection reset before it reads the answer. Either way the agent must stay whole.
        orReset: true
      },
      {
        name: 'pull, reference with ../',
        bytes: pull({ reference: `${SEED}/${up}${canary.slice(1)}/x:v1` }),
        status: 400,
        code: 'INVALID_REFERENCE'
      },
      {
        name: 'pull, absolute path',
        bytes: pull({ reference: join(canary, 'x') }),
        status: 400,
        code: 'INVALID_REFERENCE'
      },
      {
        name: 'pull, NUL in reference',
        bytes: pull({ reference: 'busybox\u0000:latest' }),
        status: 400,
        code: 'INVALID_REFERENCE'
      },
      {
        name: 'pull, 60 KB reference',
        bytes: pull({ reference: 'a'.repeat(60_000) }),
        status: 400,
        code: 'INVALID_REFERENCE'
      },
      {
        name: 'pull, bad platform',
        bytes: pull({ reference: `${SEED}/${REPO}:v1`, platform: '../../x' }),
        status: 400,
        code: 'INVALID_REFERENCE'
      },
      {
        name: 'pull, __proto__ body',
        bytes: post('/v1/pull', '{"__proto__":{"reference":"busybox"}}'),
        status: 400,
        code: 'BAD_REQUEST'
      },
      { name: 'blob, short digest', bytes: blob('sha256:1234'), status: 400, code: 'INVALID_DIGEST' },
      { name: 'blob, md5', bytes: blob(`md5:${'a'.repeat(32)}`), status: 400, code: 'INVALID_DIGEST' },
      { name: 'blob, upper-case hex', bytes: blob(layer.toUpperCase()), status: 400, code: 'INVALID_DIGEST' },
      {
        name: 'blob, encoded traversal',
        bytes: blob(`sha256:..%2F..%2F..%2F${canary.slice(1).replaceAll('/', '%2F')}`),
        status: 400,
        code: 'INVALID_DIGEST'
      },
      {
        name: 'blob, traversal in the path',
        bytes: blob(`../../../../${canary.slice(1)}/x`),
        status: 404,
        code: 'NOT_FOUND'
      },
      { name: 'blob, broken percent-encoding', bytes: blob('sha256:%E0%A4%A'), status: 400 },
      { name: 'blob, lone percent', bytes: blob('%'), status: 400 },
      {
        name: 'blob, ?ref= traversal',
        bytes: blob(`sha256:${'b'.repeat(64)}?ref=${up}x`),
        status: 400,
        code: 'INVALID_REFERENCE'
      },
      {
        name: 'blob, not held and no ref',
        bytes: blob(`sha256:${'b'.repeat(64)}`),
        status: 400,
        code: 'BAD_REQUEST'
      },
      {
        name: 'blob, range past the end',
        bytes: blob(layer, { Range: `bytes=${layerSize}-` }),
        status: 416,
        code: 'RANGE_NOT_SATISFIABLE'
      },
      {
        name: 'blob, reversed range',
        bytes: blob(layer, { Range: 'bytes=9-2' }),
        status: 416,
        code: 'RANGE_NOT_SATISFIABLE'
      },
      {
        name: 'blob, range garbage',
        bytes: blob(layer, { Range: 'bytes=abc' }),
        status: 400,
        code: 'BAD_REQUEST'
      },
      {
        name: 'blob, range of another unit',
        bytes: blob(layer, { Range: 'items=0-1' }),
        status: 400,
        code: 'BAD_REQUEST'
      },
      {
        name: 'blob, range of 2^80',
        bytes: blob(layer, { Range: 'bytes=1208925819614629174706176-' }),
        status: 416,
        code: 'RANGE_NOT_SATISFIABLE'
      },
      {
        name: 'blob, empty suffix range',
        bytes: blob(layer, { Range: 'bytes=-0' }),
        status: 416,
        code: 'RANGE_NOT_SATISFIABLE'
      },
      {
        name: 'unknown route',
        bytes: rawRequest('GET', '/v1/../../etc/passwd'),
        status: 404,
        code: 'NOT_FOUND'
      },
      {
        name: 'DELETE a blob',
        bytes: rawRequest('DELETE', `/v1/blobs/${layer}`),
        status: 404,
        code: 'NOT_FOUND'
      },
      {
        name: 'materialize, not JSON',
        bytes: post('/v1/materialize', '{'),
        status: 400,
        code: 'BAD_REQUEST'
      },
      {
        name: 'materialize, both',
        bytes: rawRequest('POST', '/v1/materialize', json({ reference: 'a', layer })),
        status: 400,
        code: 'BAD_REQUEST'
      },
      {
        name: 'materialize, layer traversal',
        bytes: rawRequest('POST', '/v1/materialize', json({ layer: `sha256:${up}x` })),
        status: 400,
        code: 'INVALID_DIGEST'
      },
      {
        name: 'release, reference traversal',
        bytes: rawRequest('POST', '/v1/release', json({ reference: `${up}etc` })),
        status: 400,
        code: 'INVALID_REFERENCE'
      },
      {
        name: 'release, never materialized',
        bytes: rawRequest('POST', '/v1/release', json({ layer })),
        status: 404,
        code: 'NOT_MATERIALIZED'
      },
      {
        name: 'garbage request line',
        bytes: Buffer.from('\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n', 'latin1'),
        status: 400
      },
      {
        name: '64 KB header',
        bytes: rawRequest('GET', '/v1/health', { headers: { 'X-Big': 'y'.repeat(65536) } }),
        status: 431
      },
      { name: 'a bare LF request', bytes: Buffer.from('GET /v1/health HTTP/1.1\nHost: x\n\n'), status: 400 }
    ]
    await send(socket, cases, socketHealthy)
  })

  it('the mirror answers every malformed request with a distribution error', async () => {
    const up = '..%2F'.repeat(10)
    const get = (path: string, headers?: Record<string, string>) => rawRequest('GET', path, { headers })
    const blob = (digest: string, headers?: Record<string, string>) =>
      get(`/v2/${REPO}/blobs/${digest}?ns=${SEED}`, headers)
    const cases: Case[] = [
      { name: 'blob, short digest', bytes: blob('sha256:abc'), status: 400, code: 'INVALID_DIGEST' },
      { name: 'blob, sha512', bytes: blob(`sha512:${'a'.repeat(128)}`), status: 400, code: 'INVALID_DIGEST' },
      {
        name: 'blob, encoded traversal',
        bytes: blob(`${up}${canary.slice(1).replaceAll('/', '%2F')}`),
        status: 400,
        code: 'INVALID_DIGEST'
      },
      { name: 'blob, broken percent-encoding', bytes: blob('sha256:%E0%A4%A'), status: 400 },
      {
        name: 'repository, broken percent-encoding',
        bytes: get(`/v2/a%E0%A4%A/blobs/${layer}`),
        status: 400
      },
      {
        name: 'blob, unknown',
        bytes: blob(`sha256:${'c'.repeat(64)}`),
        status: 404,
        code: 'UPSTREAM_NOT_FOUND'
      },
      {
        name: 'blob, range past the end',
        bytes: blob(layer, { Range: `bytes=${layerSize + 10}-` }),
        status: 416
      },
      { name: 'blob, range garbage', bytes: blob(layer, { Range: 'bytes=--' }), status: 400 },
      {
        name: 'repository, upper case',
        bytes: get(`/v2/SHOAL/App/manifests/v1?ns=${SEED}`),
        status: 400,
        code: 'BAD_REQUEST'
      },
      {
        name: 'repository, traversal',
        bytes: get(`/v2/${up}etc/manifests/v1?ns=${SEED}`),
        status: 400,
        code: 'BAD_REQUEST'
      },
      {
        name: 'repository, raw ..',
        bytes: get(`/v2/../../etc/manifests/v1?ns=${SEED}`),
        status: 404,
        code: 'NOT_FOUND'
      },
      {
        name: 'tag, traversal',
        bytes: get(`/v2/${REPO}/manifests/${up}v2%2Fother%2Fmanifests%2Fv1?ns=${SEED}`),
        status: 400,
        code: 'INVALID_REFERENCE'
      },
      {
        name: 'tag, too long',
        bytes: get(`/v2/${REPO}/manifests/${'t'.repeat(300)}?ns=${SEED}`),
        status: 400,
        code: 'INVALID_REFERENCE'
      },
      {
        name: 'tag, broken percent-encoding',
        bytes: get(`/v2/${REPO}/manifests/%E0%A4%A?ns=${SEED}`),
        status: 400
      },
      {
        name: 'manifest, bad digest',
        bytes: get(`/v2/${REPO}/manifests/sha256:xyz?ns=${SEED}`),
        status: 400,
        code: 'INVALID_DIGEST'
      },
      {
        name: 'ns, not a host',
        bytes: get(`/v2/${REPO}/manifests/v1?ns=evil%20host`),
        status: 400,
        code: 'INVALID_REFERENCE'
      },
      {
        name: 'ns, with a path',
        bytes: get(`/v2/${REPO}/manifests/v1?ns=127.0.0.1%2F..%2Fx`),
        status: 400,
        code: 'INVALID_REFERENCE'
      },
      {
        name: 'ns, with credentials',
        bytes: get(`/v2/${REPO}/manifests/v1?ns=user%3Apw%40127.0.0.1`),
        status: 400,
        code: 'INVALID_REFERENCE'
      },
      { name: 'no route', bytes: get('/v2/x'), status: 404, code: 'NOT_FOUND' },
      {
        name: 'PUT a manifest',
        bytes: rawRequest('PUT', `/v2/${REPO}/manifests/v1`, { body: '{}' }),
        status: 405
      },
      { name: 'DELETE a blob', bytes: rawRequest('DELETE', `/v2/${REPO}/blobs/${layer}`), status: 405 },
      {
        name: 'TLS hello on the plain port',
        bytes: Buffer.from('\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03', 'latin1'),
        status: 400
      },
      { name: '64 KB URL', bytes: get(`/v2/${'a/'.repeat(32768)}manifests/v1`), status: 400 }
    ]
    await send(mirror, cases, mirrorHealthy)
  })

  it('connections that never finish their request do not keep the agent from serving others', async () => {
    // Slowloris: many connections each sending part of a request line, then nothing.
    const n = scaled(200)
    const open: Socket[] = []
    for (const at of [socket, mirror]) {
      for (let i = 0; i < n / 2; i++) {
        const s = connect(at)
        s.on('error', () => {})
        s.write('GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ')
        open.push(s)
      }
    }
    try {
      await new Promise((r) => setTimeout(r, 500))
      await socketHealthy()
      await mirrorHealthy()
    } finally {
      for (const s of open) s.destroy()
    }
    tally('hostile inputs tried', n, import.meta.url)
    tally('concurrent requests held', n, import.meta.url)
    assert.ok(alive(agent.pid))
    tally('unexpected crashes', 0, import.meta.url)
  })
})
