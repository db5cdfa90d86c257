/**
 * What the crash, fault and load tests use to look at a running agent from outside: blob reads
 * over the socket API and the mirror that hash every byte they get, samples of an agent
 * process's memory and open files from /proc, and images of random bytes to push.
 */
import { createHash, randomBytes } from 'node:crypto'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import { type Agent as HttpAgent, type IncomingHttpHeaders, request } from 'node:http'
import { join } from 'node:path'
import { digestOf } from '../../src/content/digest.ts'
import { pushImage } from '../../src/registry/registry-push.ts'

/** One blob read: the status, the headers and the bytes of the body (or only their hash). */
export interface BlobRead {
  status: number
  headers: IncomingHttpHeaders
  /** Bytes of the body received. */
  length: number
  /** `sha256:<hex>` of the body. */
  digest: string
  /** The body itself, when `keep` was asked for. */
  body?: Buffer
}

/** Where a read goes: the agent's unix socket, or its mirror's `host:port`. */
export type ReadTarget = { socket: string } | { mirror: string }

export interface ReadBlobOptions {
  /** `Range: bytes=a-b` header value. */
  range?: string
  /** Keep the body (for range reads compared byte by byte). */
  keep?: boolean
  /** `?ns=` of a mirror read (the registry host). */
  ns?: string
  /** Repository of a mirror read (default `test/any`). */
  repository?: string
  /** Gives up after this long (default 60 s). */
  timeoutMs?: number
  agent?: HttpAgent
}

/**
 * GETs a blob by digest from the socket API (`/v1/blobs/<digest>`) or the mirror
 * (`/v2/<repository>/blobs/<digest>?ns=`) and hashes what arrives. A body cut short resolves
 * with what arrived (its hash will not match): the caller decides what that means.
 */
export function readBlob(
  target: ReadTarget,
  digest: string,
  options: ReadBlobOptions = {}
): Promise<BlobRead> {
  const path =
    'socket' in target
      ? `/v1/blobs/${digest}`
      : `/v2/${options.repository ?? 'test/any'}/blobs/${digest}${options.ns ? `?ns=${encodeURIComponent(options.ns)}` : ''}`
  const where =
    'socket' in target
      ? { socketPath: target.socket }
      : { host: target.mirror.split(':')[0], port: Number(target.mirror.split(':')[1]) }
  return new Promise((resolve, reject) => {
    const req = request(
      {
        ...where,
        path,
        method: 'GET',
        headers: options.range ? { range: options.range } : {},
        agent: options.agent ?? false,
        signal: AbortSignal.timeout(options.timeoutMs ?? 60_000)
      },
      (res) => {
        const hash = createHash('sha256')
        const chunks: Buffer[] = []
        let length = 0
        const finish = () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            length,
            digest: `sha256:${hash.digest('hex')}`,
            ...(options.keep && { body: Buffer.concat(chunks) })
          })
        res.on('data', (c: Buffer) => {
          hash.update(c)
          length += c.length
          if (options.keep) chunks.push(c)
        })
        res.on('end', finish)
        res.on('error', finish)
        res.on('aborted', finish)
      }
    )
    req.on('error', reject)
    req.end()
  })
}

/** Resident memory and open file descriptors of a process, from /proc. */
export interface ProcessSample {
  /** Milliseconds since the sampling began. */
  at: number
  rssBytes: number
  fds: number
}

/** Reads VmRSS and counts `/proc/<pid>/fd`. */
export async function sampleProcess(pid: number, startedAt = 0): Promise<ProcessSample> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const kb = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? Number.NaN)
  const fds = (await readdir(`/proc/${pid}/fd`)).length
  return { at: Math.round(performance.now() - startedAt), rssBytes: kb * 1024, fds }
}

/** Samples `pid` every `everyMs` until `stop()`; returns the samples taken. */
export function sampleEvery(pid: number, everyMs: number): { stop(): Promise<ProcessSample[]> } {
  const samples: ProcessSample[] = []
  const t0 = performance.now()
  let pending: Promise<void> = Promise.resolve()
  const take = () => {
    pending = sampleProcess(pid, t0).then(
      (s) => void samples.push(s),
      () => undefined
    )
  }
  take()
  const timer = setInterval(take, everyMs)
  return {
    stop: async () => {
      clearInterval(timer)
      await pending
      take()
      await pending
      return samples
    }
  }
}

/** Mean of `xs` (NaN for none). */
export function mean(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length
}

export const MiB = 1024 * 1024

/** A one-layer image of random bytes pushed to a test registry. */
export interface RandomImage {
  /** `<registry host>/<repository>:latest`. */
  ref: string
  repository: string
  /** The layer's digest and bytes. */
  digest: string
  data: Uint8Array
}

let imageSeq = 0

/**
 * Pushes an image whose one layer is `size` random bytes (not a tar: for pulls and blob reads,
 * not for materializing) to the registry at `registry.url`, as `<prefix>/blob<n>:latest`.
 */
export async function pushRandomImage(
  registry: { url: string; host: string },
  dir: string,
  size: number,
  prefix = 'hardening'
): Promise<RandomImage> {
  const data = new Uint8Array(randomBytes(size))
  const digest = digestOf(data)
  const path = join(dir, digest.slice(7))
  await writeFile(path, data)
  const repository = `${prefix}/blob${++imageSeq}-${process.pid}`
  await pushImage({
    registry: registry.url,
    repository,
    tag: 'latest',
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest, size, path }]
  })
  return { ref: `${registry.host}/${repository}:latest`, repository, digest, data }
}
