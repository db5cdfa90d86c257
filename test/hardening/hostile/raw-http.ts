/**
 * HTTP/1.1 by hand over a unix socket or TCP, for requests a well-behaved client will not send:
 * malformed paths and percent-encodings, garbage request lines, bodies larger than allowed.
 */
import { connect, type NetConnectOpts, type Socket } from 'node:net'

export interface RawResponse {
  /** 0 when the server closed without an answer. */
  status: number
  head: string
  body: string
}

/**
 * Sends `bytes` and reads until the server closes (the requests say `Connection: close`). The
 * client does not close its side first: a server may take that as the client going away.
 */
export function rawExchange(
  at: NetConnectOpts,
  bytes: string | Uint8Array,
  ms = 10_000
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket: Socket = connect(at)
    const parts: Buffer[] = []
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`no answer within ${ms} ms to ${String(bytes).slice(0, 80)}`))
    }, ms)
    socket.on('data', (d) => parts.push(d))
    // A server may close before reading everything sent (a body over its limit): what it
    // answered first still counts.
    socket.on('error', () => {})
    socket.on('close', () => {
      clearTimeout(timer)
      const text = Buffer.concat(parts).toString('latin1')
      const split = text.indexOf('\r\n\r\n')
      const head = split < 0 ? text : text.slice(0, split)
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0)
      resolve({ status, head, body: split < 0 ? '' : text.slice(split + 4) })
    })
    socket.on('connect', () => socket.write(bytes))
  })
}

/** A request as bytes: `path` is sent exactly as given, with `Connection: close`. */
export function rawRequest(
  method: string,
  path: string,
  init: { headers?: Record<string, string>; body?: string | Uint8Array } = {}
): Buffer {
  const body = init.body === undefined ? Buffer.alloc(0) : Buffer.from(init.body)
  const headers: Record<string, string> = { Host: 'shoal', Connection: 'close', ...init.headers }
  if (init.body !== undefined) headers['Content-Length'] = String(body.length)
  const head = [`${method} ${path} HTTP/1.1`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)]
  return Buffer.concat([Buffer.from(`${head.join('\r\n')}\r\n\r\n`, 'latin1'), body])
}

/** The Shoal error code of a socket API or mirror error body, if there is one. */
export function errorCode(body: string): string | undefined {
  try {
    const j = JSON.parse(body) as { error?: { code?: string }; errors?: { detail?: { code?: string } }[] }
    return j.error?.code ?? j.errors?.[0]?.detail?.code
  } catch {
    return undefined
  }
}
