import type { ChildProcess } from 'node:child_process'
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises'
import { createServer, Agent as HttpAgent, request as httpRequest } from 'node:http'
import { type AddressInfo, createServer as createNetServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { spawnDaemon } from './daemon.ts'

/** The registry binary (Debian's `docker-registry`, distribution 2.8). */
const REGISTRY_BIN = process.env.SHOAL_REGISTRY_BIN ?? '/usr/bin/docker-registry'
const READY_TIMEOUT_MS = 15_000
const BLOB_PATH = /^\/v2\/.+\/blobs\/(sha256:[a-f0-9]{64})$/

/** One request the registry answered, as seen by the counting proxy in front of it. */
export interface RegistryRequest {
  method: string
  /** Path and query as sent. */
  path: string
  status: number
  /** Response-body bytes sent to the client so far. */
  bytes: number
}

/** A real `docker-registry` on loopback, behind a proxy that counts every request and byte. */
export interface TestRegistry {
  /** `http://127.0.0.1:PORT`: the counting proxy; use it as the registry. */
  url: string
  /** `127.0.0.1:PORT`, the registry host in image references. */
  host: string
  /** Storage root: blobs are under `docker/registry/v2/blobs/sha256/<2>/<hex>/data`. */
  dataDir: string
  requests(): RegistryRequest[]
  /** GETs of `/v2/.../blobs/<digest>` (any digest when none given), whatever their status. */
  blobGets(digest?: string): number
  /** Blob response-body bytes sent (for one digest, or all blobs). Exact: counted in-process. */
  bytesServed(digest?: string): number
  resetCounters(): void
  /** Flips bytes in the middle of a stored blob, keeping its size: the registry serves it as is. */
  corruptBlob(digest: string): Promise<void>
  /** The registry's own output (access log on stdout, app log on stderr), for failure messages. */
  logs(): string
  stop(): Promise<void>
}

export interface StartRegistryInit {
  /** Storage root; a fresh temporary directory (removed on stop) when not given. */
  dataDir?: string
  /**
   * Require basic auth (`auth: htpasswd`) with `REGISTRY_USER` / `REGISTRY_PASSWORD`: every
   * request without them gets 401 and a `Basic` challenge, as a private registry answers.
   */
  htpasswd?: boolean
}

/** The one user of a registry started with `htpasswd`. */
export const REGISTRY_USER = 'shoal'
export const REGISTRY_PASSWORD = 'shoal-secret'
// bcrypt (cost 5) of REGISTRY_PASSWORD, as `htpasswd -nbB` writes it; made once with libxcrypt
// (Python's crypt.crypt with METHOD_BLOWFISH), so the tests need neither apache2-utils nor a
// bcrypt package. The registry reads `$2b$` hashes.
const REGISTRY_HTPASSWD = `${REGISTRY_USER}:$2b$05$RdsDFAhRTZtOVArUCLr65.B403hmKs9d7TjADlHV.aTU6.DpwQWv6\n`

/**
 * Starts the real registry with a config of its own (loopback, no auth unless `htpasswd`,
 * deletes enabled) and a small counting proxy in front. The registry's access log does give byte counts, but it is
 * written after the response and read through a pipe, so a test asserting right after a pull
 * could read stale numbers; the proxy counts each byte before it forwards it.
 */
export async function startRegistry(init: StartRegistryInit = {}): Promise<TestRegistry> {
  const workDir = await mkdtemp(join(tmpdir(), 'shoal-registry-'))
  const dataDir = init.dataDir ?? join(workDir, 'data')
  const port = await freePort()
  const configPath = join(workDir, 'config.yml')
  const htpasswd = init.htpasswd ? join(workDir, 'htpasswd') : undefined
  if (htpasswd) await writeFile(htpasswd, REGISTRY_HTPASSWD)
  await writeFile(configPath, registryConfig(dataDir, port, htpasswd))

  const daemon = spawnDaemon(REGISTRY_BIN, ['serve', configPath])
  const { child, exited } = daemon

  const backend = `http://127.0.0.1:${port}`
  try {
    await waitReady(backend, child, exited, () => daemon.logs())
  } catch (err) {
    await daemon.kill()
    await rm(workDir, { recursive: true, force: true })
    throw err
  }

  const proxy = await startCountingProxy(port)
  const host = `127.0.0.1:${proxy.port}`

  return {
    url: `http://${host}`,
    host,
    dataDir,
    requests: () => proxy.log.map((r) => ({ ...r })),
    blobGets: (digest) =>
      proxy.log.filter((r) => {
        if (r.method !== 'GET') return false
        const d = blobDigest(r.path)
        return d !== undefined && (digest === undefined || d === digest)
      }).length,
    bytesServed: (digest) =>
      proxy.log.reduce((sum, r) => {
        if (r.method !== 'GET') return sum
        const d = blobDigest(r.path)
        return d !== undefined && (digest === undefined || d === digest) ? sum + r.bytes : sum
      }, 0),
    resetCounters: () => {
      proxy.log.length = 0
    },
    corruptBlob: async (digest) => {
      const hex = digest.replace(/^sha256:/, '')
      const path = join(dataDir, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data')
      const file = await open(path, 'r+')
      try {
        const { size } = await file.stat()
        if (size === 0) throw new Error(`blob ${digest} is empty: nothing to corrupt`)
        const len = Math.min(16, size)
        const at = Math.floor((size - len) / 2)
        const buf = Buffer.alloc(len)
        await file.read(buf, 0, len, at)
        for (let i = 0; i < len; i++) buf[i] = (buf[i] ?? 0) ^ 0xff
        await file.write(buf, 0, len, at)
      } finally {
        await file.close()
      }
    },
    logs: () => daemon.logs(),
    stop: async () => {
      await proxy.stop()
      await daemon.kill()
      await rm(workDir, { recursive: true, force: true })
    }
  }
}

function registryConfig(dataDir: string, port: number, htpasswd: string | undefined): string {
  const auth = htpasswd
    ? `auth:
  htpasswd:
    realm: shoal-test
    path: ${JSON.stringify(htpasswd)}
`
    : ''
  return `${auth}version: 0.1
log:
  level: info
  accesslog:
    disabled: false
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: ${JSON.stringify(dataDir)}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:${port}
  secret: shoal-test-registry
`
}

function blobDigest(path: string): string | undefined {
  return BLOB_PATH.exec(path.split('?')[0] ?? '')?.[1]
}

async function freePort(): Promise<number> {
  const server = createNetServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

async function waitReady(
  url: string,
  child: ChildProcess,
  exited: Promise<number | null>,
  output: () => string
): Promise<void> {
  let dead: number | null | undefined
  void exited.then((code) => {
    dead = code
  })
  const deadline = performance.now() + READY_TIMEOUT_MS
  while (performance.now() < deadline) {
    if (dead !== undefined || child.exitCode !== null) {
      throw new Error(`docker-registry exited (${dead ?? child.exitCode}) before answering:\n${output()}`)
    }
    try {
      const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) })
      await res.arrayBuffer()
      // 401: a registry with auth is up and asking for credentials.
      if (res.status === 200 || res.status === 401) return
    } catch {
      // Not listening yet.
    }
    await sleep(50)
  }
  throw new Error(`docker-registry did not answer GET /v2/ within ${READY_TIMEOUT_MS} ms:\n${output()}`)
}

interface CountingProxy {
  port: number
  log: RegistryRequest[]
  stop(): Promise<void>
}

/** Forwards everything to the registry, keeping `Host` so its `Location` URLs point here. */
async function startCountingProxy(targetPort: number): Promise<CountingProxy> {
  const log: RegistryRequest[] = []
  const sockets = new Set<Socket>()
  const agent = new HttpAgent({ keepAlive: true })

  const server = createServer((req, res) => {
    const entry: RegistryRequest = { method: req.method ?? 'GET', path: req.url ?? '/', status: 0, bytes: 0 }
    log.push(entry)
    const upstream = httpRequest(
      { host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers: req.headers, agent },
      (upRes) => {
        entry.status = upRes.statusCode ?? 0
        res.writeHead(upRes.statusCode ?? 502, upRes.rawHeaders)
        const counter = new Transform({
          transform(chunk: Buffer, _enc, done: TransformCallback) {
            entry.bytes += chunk.length
            done(null, chunk)
          }
        })
        pipeline(upRes, counter, res).catch(() => res.destroy())
      }
    )
    upstream.on('error', () => {
      if (!res.headersSent) {
        res.writeHead(502)
        res.end()
      } else {
        res.destroy()
      }
    })
    pipeline(req, upstream).catch(() => upstream.destroy())
  })
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const { port } = server.address() as AddressInfo
  return {
    port,
    log,
    stop: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      agent.destroy()
    }
  }
}
