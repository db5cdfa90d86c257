import { createServer as createHttpServer } from 'node:http'
import { type AddressInfo, createServer as createNetServer, type Server, type Socket } from 'node:net'

/** How the server misbehaves. */
export type HungMode = 'accept-never-answer' | 'headers-then-stall'

/** A loopback server that accepts connections and then never finishes an answer. */
export interface HungServer {
  url: string
  host: string
  /** Connections accepted so far (each request of a retrying client shows up here). */
  connections(): number
  stop(): Promise<void>
}

/**
 * Starts a server that hangs: `accept-never-answer` accepts TCP connections and never writes a
 * byte (a wedged process); `headers-then-stall` answers every request with `200` headers
 * promising a 1 MiB body and then sends nothing (a stalled transfer). Sockets are tracked so
 * `stop()` ends at once.
 */
export async function startHungServer(mode: HungMode): Promise<HungServer> {
  const sockets = new Set<Socket>()
  let accepted = 0
  const track = (socket: Socket): void => {
    accepted++
    sockets.add(socket)
    socket.on('error', () => {})
    socket.on('close', () => sockets.delete(socket))
  }

  let server: Server
  if (mode === 'accept-never-answer') {
    server = createNetServer((socket) => {
      // Read and drop whatever arrives, so the client's writes never block.
      socket.resume()
    })
  } else {
    server = createHttpServer((req, res) => {
      req.resume()
      res.writeHead(200, {
        'content-type': 'application/vnd.oci.image.manifest.v1+json',
        'content-length': String(1024 * 1024)
      })
      res.flushHeaders()
    })
  }
  server.on('connection', track)

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const { port } = server.address() as AddressInfo
  const host = `127.0.0.1:${port}`

  return {
    url: `http://${host}`,
    host,
    connections: () => accepted,
    stop: async () => {
      for (const s of sockets) s.destroy()
      sockets.clear()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
