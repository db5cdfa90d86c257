/**
 * The real registry (distribution's `docker-registry`) of a protocol-level run. The image is
 * pushed first through a registry on a unix socket in the host's namespace (no network at
 * all), which is then stopped; the registry the agents pull from runs in the registry's
 * namespace on the same storage, listening on that namespace's address only.
 */

import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { AbortOptions } from '../../interface/common.ts'
import { recordHostPid } from '../netns/cleanup.ts'
import { type NetnsProcess, spawnInNetns } from '../netns/process.ts'
import type { GeneratedImage, ImageBlob } from './image.ts'

/** The registry binary (Debian's `docker-registry`, distribution 2.8). */
export const REGISTRY_BIN = process.env.SHOAL_REGISTRY_BIN ?? '/usr/bin/docker-registry'
const READY_TIMEOUT_MS = 15_000

/** A registry running in a namespace. */
export interface NetnsRegistry {
  /** `host:port` as image references name it. */
  host: string
  url: string
  process: NetnsProcess
  logFile: string
  stop(): Promise<void>
}

/** Where a run's registry keeps its files. */
export interface RegistryPlace {
  /** Directory for configs and logs. */
  dir: string
  /** Storage root, shared by the push registry and the namespace's. */
  dataDir: string
}

/** Pushes `image` as `<repository>:<tag>` into the storage at `place.dataDir`. */
export async function pushToStorage(
  place: RegistryPlace,
  repository: string,
  tag: string,
  image: GeneratedImage,
  options: AbortOptions = {}
): Promise<void> {
  await mkdir(place.dir, { recursive: true })
  const socket = join(place.dir, 'push.sock')
  const config = join(place.dir, 'push.yml')
  await writeFile(config, registryConfig(place.dataDir, { net: 'unix', addr: socket }))
  const logFile = join(place.dir, 'push.log')
  const proc = spawnInNetns(undefined, [REGISTRY_BIN, 'serve', config], { logFile })
  await recordHostPid(place.dir, proc.pid)
  try {
    await waitFor(
      proc,
      () =>
        unixRequest(socket, 'GET', '/v2/').then(
          (r) => r.status === 200,
          () => false
        ),
      options
    )
    for (const b of [...image.layers, image.config]) await pushBlob(socket, repository, b)
    const res = await unixRequest(socket, 'PUT', `/v2/${repository}/manifests/${tag}`, image.manifest.data, {
      'Content-Type': image.manifest.mediaType
    })
    if (res.status !== 201) throw new Error(`pushing the manifest: HTTP ${res.status} ${res.body}`)
  } finally {
    await proc.stop()
  }
}

/** Starts the registry in `ns` on `address:port` and waits until it listens. */
export async function startNetnsRegistry(
  ns: string,
  address: string,
  port: number,
  place: RegistryPlace,
  options: AbortOptions = {}
): Promise<NetnsRegistry> {
  const config = join(place.dir, 'registry.yml')
  await writeFile(config, registryConfig(place.dataDir, { net: 'tcp', addr: `${address}:${port}` }))
  const logFile = join(place.dir, 'registry.log')
  const proc = spawnInNetns(ns, [REGISTRY_BIN, 'serve', config], { logFile })
  try {
    await waitFor(proc, async () => proc.tail().includes(`listening on ${address}:${port}`), options)
  } catch (err) {
    await proc.stop()
    throw err
  }
  const host = `${address}:${port}`
  return { host, url: `http://${host}`, process: proc, logFile, stop: () => proc.stop() }
}

/**
 * Blob body bytes the registry wrote, from its log (`http.response.written` of every completed
 * GET of a blob): the payload it sent, without HTTP or TCP headers. Read it after the
 * registry stopped, when the log is complete.
 */
export async function blobBytesFromLog(logFile: string): Promise<number> {
  const text = await readFile(logFile, 'utf8').catch(() => '')
  let sum = 0
  for (const line of text.split('\n')) {
    if (!line.includes('http.request.method=GET') || !/http\.request\.uri="?\/v2\/\S+\/blobs\//.test(line))
      continue
    const m = /http\.response\.written=(\d+)/.exec(line)
    if (m) sum += Number(m[1])
  }
  return sum
}

function registryConfig(dataDir: string, listen: { net: 'unix' | 'tcp'; addr: string }): string {
  return `version: 0.1
log:
  level: info
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: ${JSON.stringify(dataDir)}
  cache:
    blobdescriptor: inmemory
http:
  net: ${listen.net}
  addr: ${JSON.stringify(listen.addr)}
  secret: shoal-simulation
`
}

async function pushBlob(socket: string, repository: string, b: ImageBlob): Promise<void> {
  const start = await unixRequest(socket, 'POST', `/v2/${repository}/blobs/uploads/`)
  const location = start.headers.location
  if (start.status !== 202 || typeof location !== 'string') {
    throw new Error(`starting an upload of ${b.digest}: HTTP ${start.status} ${start.body}`)
  }
  const url = new URL(location, 'http://registry')
  url.searchParams.set('digest', b.digest)
  const res = await unixRequest(socket, 'PUT', `${url.pathname}${url.search}`, b.data, {
    'Content-Type': 'application/octet-stream'
  })
  if (res.status !== 201) throw new Error(`uploading ${b.digest}: HTTP ${res.status} ${res.body}`)
}

interface UnixResponse {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: string
}

function unixRequest(
  socketPath: string,
  method: string,
  path: string,
  body?: Buffer,
  headers: Record<string, string> = {}
): Promise<UnixResponse> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method,
        path,
        agent: false,
        headers: { ...headers, 'Content-Length': String(body?.length ?? 0) }
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString('utf8')
          })
        )
        res.on('error', reject)
      }
    )
    req.on('error', reject)
    req.end(body)
  })
}

async function waitFor(
  proc: NetnsProcess,
  ready: () => Promise<boolean>,
  options: AbortOptions
): Promise<void> {
  const deadline = performance.now() + READY_TIMEOUT_MS
  while (performance.now() < deadline) {
    options.signal?.throwIfAborted()
    if (!proc.running()) throw new Error(`docker-registry exited before it was ready:\n${proc.tail()}`)
    if (await ready()) return
    await sleep(50)
  }
  throw new Error(`docker-registry was not ready within ${READY_TIMEOUT_MS} ms:\n${proc.tail()}`)
}
