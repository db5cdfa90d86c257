import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { after, describe, it } from 'node:test'
import { pino } from 'pino'
import { digestOf } from '../../../src/content/digest.ts'
import type { Clock } from '../../../src/interface/clock.ts'
import { OCI_MANIFEST } from '../../../src/oci/media-types.ts'
import { RegistryUpstream, type RegistryUpstreamInit } from '../../../src/registry/registry-upstream.ts'
import { startHungServer } from '../../harness/hung-server.ts'

const logger = pino({ level: 'silent' })

interface TestServer {
  url: string
  host: string
  /** Every request: method, URL and headers. */
  hits: { method: string; url: string; headers: IncomingMessage['headers'] }[]
  close(): Promise<void>
}

const servers: TestServer[] = []
const upstreams: RegistryUpstream[] = []
after(async () => {
  for (const u of upstreams) await u.close()
  for (const s of servers) await s.close()
})

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<TestServer> {
  const hits: TestServer['hits'] = []
  const sockets = new Set<Socket>()
  const server = createServer((req, res) => {
    hits.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers })
    handler(req, res)
  })
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  const { port } = server.address() as AddressInfo
  const s: TestServer = {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    hits,
    close: async () => {
      for (const sock of sockets) sock.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
  servers.push(s)
  return s
}

function upstream(url: string, init: Partial<RegistryUpstreamInit> = {}, clock?: Clock): RegistryUpstream {
  const u = new RegistryUpstream(
    { logger, clock },
    {
      name: 'test.registry',
      url,
      connectTimeoutMs: 500,
      responseTimeoutMs: 1000,
      bodyTimeoutMs: 1000,
      retries: 3,
      ...init
    }
  )
  upstreams.push(u)
  return u
}

const manifest = new TextEncoder().encode(JSON.stringify({ schemaVersion: 2, layers: [] }))
const manifestDigest = digestOf(manifest)
const blob = new Uint8Array(randomBytes(64 * 1024))
const blobDigest = digestOf(blob)

function sendManifest(res: ServerResponse, headers: Record<string, string> = {}): void {
  res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': manifest.length, ...headers })
  res.end(manifest)
}

/** A blob server that honours Range like distribution does. */
function sendBlob(req: IncomingMessage, res: ServerResponse, data: Uint8Array = blob): void {
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '')
  if (!m) {
    res.writeHead(200, { 'content-length': data.length })
    res.end(data)
    return
  }
  const start = Number(m[1])
  const end = Math.min(Number(m[2]), data.length - 1)
  res.writeHead(206, {
    'content-range': `bytes ${start}-${end}/${data.length}`,
    'content-length': end - start + 1
  })
  res.end(data.subarray(start, end + 1))
}

describe('RegistryUpstream', () => {
  describe('auth', () => {
    it('answers a Bearer challenge with a token from the realm, and caches it until it expires', async () => {
      let now = 1_000_000
      const clock: Clock = { now: () => now }
      const auth = await serve((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ token: 'tok-1', expires_in: 60 }))
      })
      const registry = await serve((req, res) => {
        if (req.headers.authorization !== 'Bearer tok-1') {
          res.writeHead(401, {
            'www-authenticate': `Bearer realm="${auth.url}/token",service="test.registry",scope="repository:app:pull"`
          })
          res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')
          return
        }
        sendManifest(res, { 'docker-content-digest': manifestDigest })
      })
      const u = upstream(registry.url, { username: 'alice', password: 's3cret' }, clock)
      const got = await u.getManifest('app', 'v1')
      assert.equal(got.digest, manifestDigest)
      assert.equal(auth.hits.length, 1)
      const tokenUrl = new URL(auth.hits[0]?.url ?? '', auth.url)
      assert.equal(tokenUrl.pathname, '/token')
      assert.equal(tokenUrl.searchParams.get('scope'), 'repository:app:pull')
      assert.equal(tokenUrl.searchParams.get('service'), 'test.registry')
      assert.equal(
        auth.hits[0]?.headers.authorization,
        `Basic ${Buffer.from('alice:s3cret').toString('base64')}`
      )

      await u.headManifest('app', 'v1')
      await u.getManifest('app', manifestDigest)
      assert.equal(auth.hits.length, 1, 'the cached token is reused')
      assert.equal(registry.hits.length, 4, 'one 401, then three requests with the token')

      now += 55_000
      await u.getManifest('app', 'v1')
      assert.equal(auth.hits.length, 2, 'a token about to expire is fetched again')
    })

    it('a token endpoint refusing the credentials is UPSTREAM_UNAUTHORIZED', async () => {
      const auth = await serve((_req, res) => {
        res.writeHead(401)
        res.end()
      })
      const registry = await serve((_req, res) => {
        res.writeHead(401, { 'www-authenticate': `Bearer realm="${auth.url}/token",service="x"` })
        res.end()
      })
      await assert.rejects(upstream(registry.url).getManifest('app', 'v1'), { code: 'UPSTREAM_UNAUTHORIZED' })
    })

    it('answers a Basic challenge with the credentials, then sends them up front', async () => {
      const expected = `Basic ${Buffer.from('bob:pw').toString('base64')}`
      const registry = await serve((req, res) => {
        if (req.headers.authorization !== expected) {
          res.writeHead(401, { 'www-authenticate': 'Basic realm="Registry Realm"' })
          res.end()
          return
        }
        sendManifest(res)
      })
      const u = upstream(registry.url, { username: 'bob', password: 'pw' })
      await u.getManifest('app', 'v1')
      await u.getManifest('app', 'v1')
      assert.equal(registry.hits.length, 3)
      assert.equal(registry.hits[2]?.headers.authorization, expected)
    })

    it('without credentials a challenge is UPSTREAM_UNAUTHORIZED, without retries', async () => {
      const registry = await serve((_req, res) => {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' })
        res.end()
      })
      const err = await upstream(registry.url)
        .getManifest('app', 'v1')
        .catch((e: unknown) => e)
      assert.equal((err as { code?: string }).code, 'UPSTREAM_UNAUTHORIZED')
      assert.match((err as Error).message, /test\.registry.*app:v1/)
      assert.equal(registry.hits.length, 1)
    })

    it('sends a static token as Bearer; 403 is UPSTREAM_UNAUTHORIZED', async () => {
      const registry = await serve((req, res) => {
        if (req.headers.authorization === 'Bearer static') sendManifest(res)
        else {
          res.writeHead(403)
          res.end()
        }
      })
      await upstream(registry.url, { token: 'static' }).getManifest('app', 'v1')
      await assert.rejects(upstream(registry.url, { token: 'wrong' }).getManifest('app', 'v1'), {
        code: 'UPSTREAM_UNAUTHORIZED'
      })
    })
  })

  it('follows a redirect to another host without the Authorization header', async () => {
    const cdn = await serve((req, res) => sendBlob(req, res))
    const registry = await serve((req, res) => {
      if (req.url?.startsWith('/v2/app/blobs/')) {
        res.writeHead(307, { location: `${cdn.url}/bucket/blob?sig=1` })
        res.end()
        return
      }
      res.writeHead(404)
      res.end()
    })
    const u = upstream(registry.url, { token: 'secret' })
    const got = await u.fetchBlob('app', blobDigest)
    assert.deepEqual(got, blob)
    assert.equal(registry.hits[0]?.headers.authorization, 'Bearer secret')
    assert.equal(cdn.hits[0]?.url, '/bucket/blob?sig=1')
    assert.equal(cdn.hits[0]?.headers.authorization, undefined)
    assert.equal(cdn.hits[0]?.headers['accept-encoding'], 'identity')
  })

  it('gives up after too many redirects', async () => {
    const loop = await serve((req, res) => {
      res.writeHead(302, { location: req.url ?? '/' })
      res.end()
    })
    await assert.rejects(upstream(loop.url).fetchBlob('app', blobDigest), { code: 'UPSTREAM_PROTOCOL' })
    assert.equal(loop.hits.length, 6)
  })

  describe('retries', () => {
    it('retries 503 and succeeds on the third attempt', async () => {
      let n = 0
      const registry = await serve((_req, res) => {
        if (++n <= 2) {
          res.writeHead(503)
          res.end()
          return
        }
        sendManifest(res)
      })
      const got = await upstream(registry.url).getManifest('app', 'v1')
      assert.equal(got.digest, manifestDigest)
      assert.equal(registry.hits.length, 3)
    })

    it('5xx beyond the retries is UPSTREAM_UNAVAILABLE', async () => {
      const registry = await serve((_req, res) => {
        res.writeHead(500)
        res.end()
      })
      await assert.rejects(upstream(registry.url, { retries: 2 }).statBlob('app', blobDigest), {
        code: 'UPSTREAM_UNAVAILABLE'
      })
      assert.equal(registry.hits.length, 3)
    })

    it('waits as long as Retry-After says on 429', async () => {
      let n = 0
      const registry = await serve((_req, res) => {
        if (++n === 1) {
          res.writeHead(429, { 'retry-after': '1' })
          res.end()
          return
        }
        sendManifest(res)
      })
      const started = performance.now()
      await upstream(registry.url).getManifest('app', 'v1')
      assert.ok(performance.now() - started >= 950, 'waited for Retry-After')
      assert.equal(registry.hits.length, 2)
    })

    it('429 until the retries run out is UPSTREAM_RATE_LIMITED', async () => {
      const registry = await serve((_req, res) => {
        res.writeHead(429)
        res.end()
      })
      await assert.rejects(upstream(registry.url, { retries: 1 }).getManifest('app', 'v1'), {
        code: 'UPSTREAM_RATE_LIMITED'
      })
      assert.equal(registry.hits.length, 2)
    })

    it('404 is UPSTREAM_NOT_FOUND at once', async () => {
      const registry = await serve((_req, res) => {
        res.writeHead(404, { 'content-type': 'application/json' })
        res.end('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
      })
      const err = await upstream(registry.url)
        .getManifest('app', 'v1')
        .catch((e: unknown) => e)
      assert.equal((err as { code?: string }).code, 'UPSTREAM_NOT_FOUND')
      assert.match((err as Error).message, /MANIFEST_UNKNOWN/)
      assert.equal(registry.hits.length, 1)
    })

    it('a closed port is UPSTREAM_UNAVAILABLE after the retries', async () => {
      const gone = await serve(() => {})
      await gone.close()
      await assert.rejects(upstream(gone.url, { retries: 1 }).getManifest('app', 'v1'), {
        code: 'UPSTREAM_UNAVAILABLE'
      })
    })
  })

  describe('timeouts and aborts', () => {
    it('a server that never answers is UPSTREAM_TIMEOUT, quickly', async () => {
      const hung = await startHungServer('accept-never-answer')
      try {
        const started = performance.now()
        await assert.rejects(
          upstream(hung.url, { responseTimeoutMs: 200, retries: 2 }).getManifest('app', 'v1'),
          { code: 'UPSTREAM_TIMEOUT' }
        )
        assert.ok(performance.now() - started < 2000)
      } finally {
        await hung.stop()
      }
    })

    it('a body that stalls is UPSTREAM_TIMEOUT', async () => {
      const hung = await startHungServer('headers-then-stall')
      try {
        const started = performance.now()
        await assert.rejects(upstream(hung.url, { bodyTimeoutMs: 200 }).fetchBlob('app', blobDigest), {
          code: 'UPSTREAM_TIMEOUT'
        })
        // HEAD without Docker-Content-Digest falls back to a GET, whose body stalls.
        await assert.rejects(upstream(hung.url, { bodyTimeoutMs: 200 }).headManifest('app', 'v1'), {
          code: 'UPSTREAM_TIMEOUT'
        })
        // undici checks body timeouts on a coarse (about 1 s) timer.
        assert.ok(performance.now() - started < 4000)
      } finally {
        await hung.stop()
      }
    })

    it('an aborted signal is ABORTED', async () => {
      const hung = await startHungServer('accept-never-answer')
      try {
        await assert.rejects(
          upstream(hung.url, { responseTimeoutMs: 5000 }).getManifest('app', 'v1', {
            signal: AbortSignal.timeout(100)
          }),
          { code: 'ABORTED' }
        )
      } finally {
        await hung.stop()
      }
    })
  })

  describe('blobs', () => {
    it('fetches a range from a 206 and sends Range and Accept-Encoding: identity', async () => {
      const registry = await serve((req, res) => sendBlob(req, res))
      const got = await upstream(registry.url).fetchBlob('app', blobDigest, {
        range: { start: 100, end: 5000 }
      })
      assert.deepEqual(got, blob.subarray(100, 5000))
      assert.equal(registry.hits[0]?.headers.range, 'bytes=100-4999')
      assert.equal(registry.hits[0]?.headers['accept-encoding'], 'identity')
    })

    it('slices the range out of a 200 and stops reading once it has it', async () => {
      const big = 16 * 1024 * 1024
      const registry = await serve((_req, res) => {
        // Promises 16 MiB, sends the first 64 KiB and stalls: a reader that waits for the
        // whole body would time out.
        res.writeHead(200, { 'content-length': big })
        res.write(blob)
      })
      const started = performance.now()
      const got = await upstream(registry.url, { bodyTimeoutMs: 5000 }).fetchBlob('app', blobDigest, {
        range: { start: 1000, end: 30_000 }
      })
      assert.deepEqual(got, blob.subarray(1000, 30_000))
      assert.ok(performance.now() - started < 2000)
    })

    it('statBlob reads Content-Length from a HEAD', async () => {
      const registry = await serve((req, res) => sendBlob(req, res))
      assert.deepEqual(await upstream(registry.url).statBlob('app', blobDigest), { size: blob.length })
      assert.equal(registry.hits[0]?.method, 'HEAD')
    })

    it('a short 206 is SIZE_MISMATCH', async () => {
      const registry = await serve((_req, res) => {
        res.writeHead(206, { 'content-range': `bytes 0-99/${blob.length}`, 'content-length': 50 })
        res.end(blob.subarray(0, 50))
      })
      await assert.rejects(
        upstream(registry.url).fetchBlob('app', blobDigest, { range: { start: 0, end: 100 } }),
        { code: 'SIZE_MISMATCH' }
      )
    })

    it('a 206 for another offset is UPSTREAM_PROTOCOL', async () => {
      const registry = await serve((_req, res) => {
        res.writeHead(206, { 'content-range': `bytes 0-99/${blob.length}`, 'content-length': 100 })
        res.end(blob.subarray(0, 100))
      })
      await assert.rejects(
        upstream(registry.url).fetchBlob('app', blobDigest, { range: { start: 10, end: 110 } }),
        { code: 'UPSTREAM_PROTOCOL' }
      )
    })

    it('a 200 shorter than the range is SIZE_MISMATCH', async () => {
      const registry = await serve((_req, res) => {
        res.writeHead(200, { 'content-length': 100 })
        res.end(blob.subarray(0, 100))
      })
      await assert.rejects(
        upstream(registry.url).fetchBlob('app', blobDigest, { range: { start: 50, end: 200 } }),
        { code: 'SIZE_MISMATCH' }
      )
    })
  })

  describe('manifests', () => {
    it('forwards Accept and keeps Content-Type verbatim', async () => {
      const registry = await serve((_req, res) =>
        sendManifest(res, { 'content-type': `${OCI_MANIFEST}; charset=utf-8` })
      )
      const got = await upstream(registry.url).getManifest('app', 'v1', { accept: [OCI_MANIFEST, '*/*'] })
      assert.equal(got.mediaType, `${OCI_MANIFEST}; charset=utf-8`)
      assert.equal(registry.hits[0]?.headers.accept, `${OCI_MANIFEST}, */*`)
    })

    it('sends the OCI and Docker types when the client gave none', async () => {
      const registry = await serve((_req, res) => sendManifest(res))
      await upstream(registry.url).getManifest('app', 'v1')
      const accept = registry.hits[0]?.headers.accept ?? ''
      for (const t of ['oci.image.index', 'oci.image.manifest', 'manifest.list.v2', 'manifest.v2']) {
        assert.match(accept, new RegExp(t.replaceAll('.', '\\.')))
      }
    })

    it('takes the JSON mediaType when Content-Type is missing', async () => {
      const bytes = new TextEncoder().encode(
        JSON.stringify({ mediaType: 'application/x-test', schemaVersion: 2 })
      )
      const registry = await serve((_req, res) => {
        res.removeHeader('content-type')
        res.writeHead(200, { 'content-length': bytes.length })
        res.end(bytes)
      })
      assert.equal((await upstream(registry.url).getManifest('app', 'v1')).mediaType, 'application/x-test')
    })

    it('bytes that do not hash to the digest asked for are DIGEST_MISMATCH', async () => {
      const registry = await serve((_req, res) => sendManifest(res))
      const other = `sha256:${'a'.repeat(64)}`
      await assert.rejects(upstream(registry.url).getManifest('app', other), { code: 'DIGEST_MISMATCH' })
    })

    it('a Docker-Content-Digest that disagrees with the bytes is DIGEST_MISMATCH', async () => {
      const registry = await serve((_req, res) =>
        sendManifest(res, { 'docker-content-digest': `sha256:${'b'.repeat(64)}` })
      )
      await assert.rejects(upstream(registry.url).getManifest('app', 'v1'), { code: 'DIGEST_MISMATCH' })
    })

    it('headManifest uses the headers, and falls back to GET without Docker-Content-Digest', async () => {
      const withDigest = await serve((_req, res) =>
        sendManifest(res, { 'docker-content-digest': manifestDigest })
      )
      const head = await upstream(withDigest.url).headManifest('app', 'v1')
      assert.deepEqual(head, { digest: manifestDigest, mediaType: OCI_MANIFEST, size: manifest.length })
      assert.deepEqual(
        withDigest.hits.map((h) => h.method),
        ['HEAD']
      )
      const without = await serve((_req, res) => sendManifest(res))
      assert.deepEqual(await upstream(without.url).headManifest('app', 'v1'), head)
      assert.deepEqual(
        without.hits.map((h) => h.method),
        ['HEAD', 'GET']
      )
    })

    it('a manifest larger than the limit is UPSTREAM_PROTOCOL', async () => {
      const registry = await serve((_req, res) => {
        res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': 5 * 1024 * 1024 })
        res.end(Buffer.alloc(5 * 1024 * 1024))
      })
      await assert.rejects(upstream(registry.url).getManifest('app', 'v1'), { code: 'UPSTREAM_PROTOCOL' })
    })
  })
})
