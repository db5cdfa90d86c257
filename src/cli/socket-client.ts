import { request } from 'node:http'
import { createInterface } from 'node:readline'
import { ShoalError } from '../errors.ts'

/** Error from the agent's socket API, carrying the agent's code. */
export class AgentRequestError extends ShoalError {}

/** Calls the agent's socket API and returns the parsed JSON body. */
export async function callAgent<T>(
  socketPath: string,
  method: string,
  path: string,
  body?: unknown
): Promise<T> {
  const res = await send(socketPath, method, path, body)
  const text = await new Response(res as unknown as ReadableStream).text()
  const json = text ? JSON.parse(text) : {}
  if ((res.statusCode ?? 500) >= 400) {
    throw new AgentRequestError(
      json?.error?.code ?? 'INTERNAL',
      json?.error?.message ?? `HTTP ${res.statusCode}`
    )
  }
  return json as T
}

/** Calls an NDJSON endpoint and yields each event as it arrives. */
export async function* streamAgent<T>(socketPath: string, path: string, body: unknown): AsyncGenerator<T> {
  const res = await send(socketPath, 'POST', path, body)
  if ((res.statusCode ?? 500) >= 400) {
    const text = await new Response(res as unknown as ReadableStream).text()
    const json = text ? JSON.parse(text) : {}
    throw new AgentRequestError(
      json?.error?.code ?? 'INTERNAL',
      json?.error?.message ?? `HTTP ${res.statusCode}`
    )
  }
  // A caller that stops reading early (a `return` out of its loop) must not leave the response
  // open: its later error would go unhandled.
  res.on('error', () => {})
  try {
    for await (const line of createInterface({ input: res, crlfDelay: Number.POSITIVE_INFINITY })) {
      if (line.trim()) yield JSON.parse(line) as T
    }
  } finally {
    res.destroy()
  }
}

function send(socketPath: string, method: string, path: string, body?: unknown) {
  return new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = request(
      {
        socketPath,
        // A fresh connection per call: a pooled one may have been closed by the agent's
        // keep-alive timeout while this process was busy, and writing to it fails with EPIPE.
        agent: false,
        method,
        path,
        headers: payload
          ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) }
          : {}
      },
      resolve
    )
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        reject(
          new AgentRequestError(
            'AGENT_UNREACHABLE',
            `no agent answers on ${socketPath} (is \`shoal agent\` running?)`
          )
        )
      } else reject(err)
    })
    req.end(payload)
  })
}
