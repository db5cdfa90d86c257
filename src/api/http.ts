import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { BadRequestError, httpStatusOf, RangeNotSatisfiableError, toShoalError } from '../errors.ts'
import type { ByteRange } from '../interface/common.ts'

/** An AbortSignal that fires when the client goes away before the response is finished. */
export function requestSignal(req: IncomingMessage, res: ServerResponse): AbortSignal {
  const ac = new AbortController()
  res.on('close', () => {
    if (!res.writableFinished) ac.abort()
  })
  req.on('aborted', () => ac.abort())
  return ac.signal
}

export function sendJson(res: ServerResponse, status: number, body: unknown, head = false): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text)
  })
  res.end(head ? undefined : text)
}

/** A typed error as JSON: `{ error: { code, message } }` with the status from the code table. */
export function sendError(res: ServerResponse, err: unknown, head = false): number {
  const e = toShoalError(err)
  const status = httpStatusOf(e)
  if (res.headersSent) {
    res.destroy(e)
    return status
  }
  sendJson(res, status, { error: { code: e.code, message: e.message } }, head)
  return status
}

/**
 * Parses a single `Range: bytes=a-b` (also `a-` and `-n`) against a size. Returns undefined for
 * no Range header; throws `RangeNotSatisfiableError` for a range outside the blob. Multi-range
 * requests are answered whole, as RFC 9110 allows.
 */
export function parseRange(header: string | undefined, size: number): ByteRange | undefined {
  if (header === undefined || header === '') return undefined
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (!m) {
    if (/^bytes=.+,/.test(header)) return undefined
    throw new BadRequestError(`malformed Range header "${header.slice(0, 60)}"`)
  }
  const [, a = '', b = ''] = m
  let start: number
  let end: number
  if (a === '' && b === '') throw new BadRequestError('Range header names no bytes')
  if (a === '') {
    const n = Number(b)
    start = Math.max(0, size - n)
    end = size
  } else {
    start = Number(a)
    end = b === '' ? size : Math.min(Number(b) + 1, size)
  }
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start >= size || start >= end) {
    throw new RangeNotSatisfiableError(`range ${header} is outside the blob (${size} bytes)`)
  }
  return { start, end }
}

/** Streams a body with backpressure; resolves when sent, rejects when the client went away. */
export async function sendBody(
  res: ServerResponse,
  body: AsyncIterable<Uint8Array>,
  onChunk?: (n: number) => void
): Promise<void> {
  const counted = onChunk
    ? (async function* () {
        for await (const chunk of body) {
          onChunk(chunk.length)
          yield chunk
        }
      })()
    : body
  await pipeline(Readable.from(counted, { objectMode: false }), res)
}

/** A percent-encoded part of a request path, decoded; a malformed encoding is a `BadRequestError`. */
export function decodePathPart(part: string): string {
  try {
    return decodeURIComponent(part)
  } catch {
    throw new BadRequestError(`malformed percent-encoding in "${part.slice(0, 100)}"`)
  }
}

/** Reads a request body up to `limit` bytes. */
export async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  let n = 0
  for await (const chunk of req) {
    n += (chunk as Buffer).length
    if (n > limit) throw new BadRequestError(`request body larger than ${limit} bytes`)
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

/** Starts `server` listening on a unix socket path or a port and host; rejects on EADDRINUSE etc. */
export function listen(server: Server, at: { path: string } | { port: number; host: string }): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    const done = () => {
      server.off('error', reject)
      resolve()
    }
    if ('path' in at) server.listen(at.path, done)
    else server.listen(at.port, at.host, done)
  })
}

/** Stops accepting and ends every open connection, keep-alive ones included. */
export function closeServer(server: Server): Promise<void> {
  return new Promise<void>((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })
}
