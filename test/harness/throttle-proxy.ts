import { createServer, type IncomingMessage, request, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'

/** An HTTP proxy in front of a registry that slows response bodies and counts blob bytes. */
export interface ThrottleProxy {
  url: string
  host: string
  /** Response-body bytes sent per blob digest (GET /v2/.../blobs/<digest>). */
  blobBytes(digest: string): number
  /** Change the rate (bytes per second, shared by all responses); 0 = unlimited. */
  setRate(bytesPerSecond: number): void
  /** While on, every blob request is answered 503 (a registry whose storage is down). */
  refuseBlobs(on: boolean): void
  /** Plays `fault` on each of the next `count` blob GETs instead of answering them faithfully. */
  injectBlobFaults(fault: BlobFault, count: number): void
  /** Drops the faults not played yet. */
  clearBlobFaults(): void
  /** Blob GETs answered with an injected fault since the last reset. */
  faultsPlayed(): number
  /** Every blob GET since the last reset: its Range header, bytes sent, and when (ms). */
  blobRequests(): BlobRequest[]
  resetCounters(): void
  stop(): Promise<void>
}

export interface BlobRequest {
  digest: string
  range: string | undefined
  bytes: number
  startedAt: number
  endedAt: number | undefined
  /** The fault played on it, if any (`BlobFault['kind']`). */
  fault?: BlobFault['kind']
}

/**
 * How a registry misbehaves on one blob GET: `status` answers that status (with `Retry-After`
 * when given) and no blob; `cut` forwards the headers and `afterBytes` of the body, then
 * resets the connection; `hang` forwards the headers and then sends nothing, ever.
 */
export type BlobFault =
  | { kind: 'status'; status: number; retryAfter?: string }
  | { kind: 'cut'; afterBytes: number }
  | { kind: 'hang' }

const BLOB_PATH = /\/blobs\/(sha256:[a-f0-9]{64})/

/**
 * Starts a loopback proxy to `target` (`http://host:port`). By default the rate is one token
 * bucket shared by every response, so a transfer through it takes a predictable time however
 * many requests run in parallel: long enough to kill an agent mid-blob. With `perResponse`
 * every response gets the rate of its own, like a registry that caps each connection.
 */
export async function startThrottleProxy(
  target: string,
  bytesPerSecond: number,
  options: { perResponse?: boolean } = {}
): Promise<ThrottleProxy> {
  const upstream = new URL(target)
  let rate = bytesPerSecond
  let shared = Date.now()
  const counts = new Map<string, number>()
  let requests: BlobRequest[] = []
  let refusing = false
  const faults: BlobFault[] = []
  let played = 0
  const sockets = new Set<Socket>()

  const throttle = (digest: string | undefined, record: BlobRequest | undefined) => {
    // Each response has a link of its own (`perResponse`: a registry or CDN that caps each
    // connection), or all share one (a slow uplink).
    let own = Date.now()
    // Reserves the link for `n` bytes; returns the wait until they have "gone through".
    const reserve = (n: number): number => {
      if (rate <= 0) return 0
      const now = Date.now()
      const free = Math.max(options.perResponse ? own : shared, now) + (n / rate) * 1000
      if (options.perResponse) own = free
      else shared = free
      return free - now
    }
    return new Transform({
      transform(chunk: Buffer, _enc, done: TransformCallback) {
        const slices: Buffer[] = []
        for (let i = 0; i < chunk.length; i += 16 * 1024) slices.push(chunk.subarray(i, i + 16 * 1024))
        const push = (): void => {
          const s = slices.shift()
          if (!s) {
            done()
            return
          }
          const send = () => {
            if (digest) counts.set(digest, (counts.get(digest) ?? 0) + s.length)
            if (record) record.bytes += s.length
            this.push(s)
            push()
          }
          // Timers fire no sooner than 1 ms: below that, send at once and let the debt build up
          // in the bucket, which the next longer wait pays back. The average rate stays exact.
          const wait = reserve(s.length)
          if (wait < 2) send()
          else setTimeout(send, wait)
        }
        push()
      }
    })
  }

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const digest = BLOB_PATH.exec(req.url ?? '')?.[1]
    if (digest && refusing) {
      res.writeHead(503, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAVAILABLE"}]}')
      return
    }
    const record: BlobRequest | undefined =
      digest && req.method === 'GET'
        ? { digest, range: req.headers.range, bytes: 0, startedAt: Date.now(), endedAt: undefined }
        : undefined
    if (record) requests.push(record)
    res.once('close', () => {
      if (record) record.endedAt = Date.now()
    })
    const fault = record ? faults.shift() : undefined
    if (record && fault) {
      record.fault = fault.kind
      played++
      if (fault.kind === 'status') {
        const extra = fault.retryAfter === undefined ? {} : { 'retry-after': fault.retryAfter }
        res
          .writeHead(fault.status, { 'content-type': 'application/json', ...extra })
          .end('{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}')
        return
      }
    }
    const headers = { ...req.headers, host: upstream.host }
    const out = request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers)
        if (fault?.kind === 'hang') {
          res.flushHeaders()
          up.resume()
          return
        }
        const cut =
          fault?.kind === 'cut' ? cutAfter(fault.afterBytes, () => res.socket?.destroy()) : undefined
        const body = throttle(req.method === 'GET' ? digest : undefined, record)
        ;(cut ? pipeline(up, cut, body, res) : pipeline(up, body, res)).catch(() => res.destroy())
      }
    )
    out.on('error', () => {
      if (!res.headersSent) res.writeHead(502).end()
      else res.destroy()
    })
    req.pipe(out)
  })
  server.on('connection', (s) => {
    sockets.add(s)
    s.once('close', () => sockets.delete(s))
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as AddressInfo).port
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    blobBytes: (d) => counts.get(d) ?? 0,
    setRate: (r) => {
      rate = r
    },
    blobRequests: () => requests,
    refuseBlobs: (on) => {
      refusing = on
    },
    injectBlobFaults: (fault, count) => {
      for (let i = 0; i < count; i++) faults.push(fault)
    },
    clearBlobFaults: () => {
      faults.length = 0
    },
    faultsPlayed: () => played,
    resetCounters: () => {
      counts.clear()
      requests = []
      played = 0
    },
    stop: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((r) => server.close(() => r()))
    }
  }
}

/**
 * Passes `limit` bytes through, then calls `cut` (which resets the connection). The body never
 * ends on its own: a short body that ended cleanly would leave the client waiting for the rest.
 */
function cutAfter(limit: number, cut: () => void): Transform {
  let passed = 0
  return new Transform({
    transform(chunk: Buffer, _enc, done: TransformCallback) {
      const room = limit - passed
      if (room > 0) this.push(chunk.subarray(0, room))
      passed += chunk.length
      // Let what was pushed reach the socket first, then reset it.
      if (passed >= limit && passed - chunk.length < limit) setTimeout(cut, 20)
      done()
    },
    flush() {
      setTimeout(cut, 20)
    }
  })
}
