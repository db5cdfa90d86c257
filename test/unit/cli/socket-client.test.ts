import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer, type ServerResponse } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { streamAgent } from '../../../src/cli/socket-client.ts'

describe('streamAgent', () => {
  it('closes the response when the caller stops reading early, so a later reset is harmless', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-client-'))
    const socket = join(dir, 'agent.sock')
    let open: ServerResponse | undefined
    let closed = false
    const server = createServer((_req, res) => {
      open = res
      res.on('close', () => {
        closed = true
      })
      res.writeHead(200, { 'Content-Type': 'application/x-ndjson' })
      res.write('{"type":"progress","n":1}\n{"type":"progress","n":2}\n')
    })
    await new Promise<void>((resolve) => server.listen(socket, resolve))
    try {
      const seen: number[] = []
      for await (const e of streamAgent<{ n: number }>(socket, '/v1/pull', {})) {
        seen.push(e.n)
        break
      }
      assert.deepEqual(seen, [1])
      // The client hung up: the server sees its response close, and a reset now hurts no one.
      for (let i = 0; i < 50 && !closed; i++) await sleep(10)
      assert.ok(closed, 'the response was left open')
      open?.socket?.destroy()
      await sleep(50)
    } finally {
      server.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
})
