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
  resetCounters(): void
  stop(): Promise<void>
}

const BLOB_PATH = /\/blobs\/(sha256:[a-f0-9]{64})/

/**
 * Starts a loopback proxy to `target` (`http://host:port`). The rate is one token bucket shared
 * by every response, so a transfer through it takes a predictable time however many requests
 * run in parallel: long enough to kill an agent mid-blob.
 */
export async function startThrottleProxy(target: string, bytesPerSecond: number): Promise<ThrottleProxy> {
  const upstream = new URL(target)
  let rate = bytesPerSecond
  let nextFree = Date.now()
  const counts = new Map<string, number>()
  const sockets = new Set<Socket>()

  // Reserve the shared link for `n` bytes; returns the wait until they have "gone through".
  const reserve = (n: number): number => {
    if (rate <= 0) return 0
    const now = Date.now()
    nextFree = Math.max(nextFree, now) + (n / rate) * 1000
    return nextFree - now
  }

  const throttle = (digest: string | undefined) =>
    new Transform({
      transform(chunk: Buffer, _enc, done: TransformCallback) {
        const slices: Buffer[] = []
        for (let i = 0; i < chunk.length; i += 16 * 1024) slices.push(chunk.subarray(i, i + 16 * 1024))
        const push = (): void => {
          const s = slices.shift()
          if (!s) {
            done()
            return
          }
          setTimeout(() => {
            if (digest) counts.set(digest, (counts.get(digest) ?? 0) + s.length)
            this.push(s)
            push()
          }, reserve(s.length))
        }
        push()
      }
    })

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const digest = BLOB_PATH.exec(req.url ?? '')?.[1]
    const headers = { ...req.headers, host: upstream.host }
    const out = request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers)
        pipeline(up, throttle(req.method === 'GET' ? digest : undefined), res).catch(() => res.destroy())
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
    resetCounters: () => counts.clear(),
    stop: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((r) => server.close(() => r()))
    }
  }
}
