/**
 * The far end of the throughput benchmark, in its own process (as agents are): a swarm node
 * holding one random blob in memory, which serves it two ways: as pieces over the piece
 * protocol, and as raw bytes on a bare libp2p stream (the ceiling the piece path is measured
 * against). Prints `{peerId, addresses, digest, size, pieceSize, raw}` as one JSON line, then
 * serves until stdin closes.
 *
 *   node --import tsx test/bench/peer-process.ts <swarm key file> <bytes> <piece size>
 */
import '../../src/polyfill.ts'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { pino } from 'pino'
import { systemClock } from '../../src/clock.ts'
import { digestOf } from '../../src/content/digest.ts'
import { buildPieceList } from '../../src/content/piece-list.ts'
import { pieceRange } from '../../src/content/pieces.ts'
import { PieceExchange } from '../../src/p2p/piece-exchange.ts'
import { MemoryBlobStore } from '../../src/store/memory-blob-store.ts'
import { loopbackSwarmNode, RAW_PROTOCOL } from './bench-agents.ts'

const CHUNK = 64 * 1024

async function main(): Promise<void> {
  const [keyFile, bytesArg, pieceArg] = process.argv.slice(2)
  if (!keyFile || !bytesArg || !pieceArg)
    throw new Error('usage: peer-process <key file> <bytes> <piece size>')
  const size = Number(bytesArg)
  const pieceSize = Number(pieceArg)
  const logger = pino({ level: 'silent' })
  const data = new Uint8Array(randomBytes(size))
  const digest = digestOf(data)
  const pieceList = buildPieceList(digest, data, pieceSize)
  const store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 2 * size + pieceSize })
  await store.start()
  await store.begin(digest, { size, pieceSize })
  for (const [i, sha256] of pieceList.hashes.entries()) {
    const { start, end } = pieceRange(i, size, pieceSize)
    await store.putPiece(digest, i, data.subarray(start, end), { sha256, source: 'registry' })
  }
  await store.complete(digest)

  const node = await loopbackSwarmNode(keyFile, logger)
  await node.start()
  const exchange = new PieceExchange({ node, store, logger }, {})
  await exchange.start()
  await node.libp2p.handle(RAW_PROTOCOL, async (stream) => {
    for (let at = 0; at < size; at += CHUNK) {
      if (!stream.send(data.subarray(at, Math.min(size, at + CHUNK)))) await once(stream, 'drain')
    }
    await stream.close()
  })
  process.stdout.write(
    `${JSON.stringify({ peerId: node.peerId, addresses: node.addresses(), digest, size, pieceSize })}\n`
  )
  process.stdin.resume()
  await once(process.stdin, 'end')
  await exchange.stop()
  await node.stop()
  await store.stop()
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : err}\n`)
  process.exit(1)
})
