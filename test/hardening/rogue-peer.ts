/**
 * A misbehaving swarm member for the fault tests: a real libp2p host (`SwarmNode`, the swarm's
 * key, Noise, yamux) that speaks the piece protocol with Shoal's own wire codec, and lies or
 * fails in one chosen way about one chosen blob. Every other blob it answers `BLOB_UNKNOWN`, as
 * an honest peer that does not hold it would.
 */
import '../../src/polyfill.ts'
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { Stream } from '@libp2p/interface'
import type { Logger } from 'pino'
import { sha256Hex } from '../../src/content/digest.ts'
import { buildPieceList, encodePieceList } from '../../src/content/piece-list.ts'
import { pieceCount, pieceRange } from '../../src/content/pieces.ts'
import { Bitfield } from '../../src/p2p/bitfield.ts'
import { loadOrCreatePrivateKey } from '../../src/p2p/identity.ts'
import { DEFAULT_PROTOCOL_PREFIX, SwarmNode } from '../../src/p2p/swarm-node.ts'
import { encodeFrameParts, FrameDecoder, type WireMessage } from '../../src/p2p/wire.ts'

/**
 * How the peer misbehaves about its blob:
 * - `stall`: offers every piece, never sends one;
 * - `reset`: offers every piece, resets the stream on the first request;
 * - `liar`: offers every piece (HAVE for all) and holds none: rejects each request;
 * - `corrupt`: offers every piece with the true piece list, sends them with flipped bytes;
 * - `forger`: offers every piece as a partial peer, with HAVE hashes of forged bytes it serves
 *   faithfully (each piece passes its hash; only the whole-blob digest catches them);
 * - `oversized`: offers every piece, answers a request with a frame longer than any limit;
 * - `claimer`: a partial peer that claims (`fetching`) every piece and never delivers one.
 */
export type RogueMode = 'stall' | 'reset' | 'liar' | 'corrupt' | 'forger' | 'oversized' | 'claimer'

export interface RoguePeerInit {
  mode: RogueMode
  /** The blob it misbehaves about: its digest and bytes. */
  digest: string
  data: Uint8Array
  /** Piece size of the blob in the swarm (`swarmPieceSize(size, store.pieceSize)`). */
  pieceSize: number
  swarmKey: Uint8Array
  /** Where its identity key is kept. */
  dir: string
  logger: Logger
}

/** A running rogue peer. */
export interface RoguePeer {
  peerId: string
  /** Its multiaddrs (with `/p2p/<id>`), to bootstrap an agent with. */
  addresses: string[]
  /** Hellos for its blob, and piece requests, it received. */
  stats: { hellos: number; requests: number }
  /** Resolves once it has sent its first claims (`claimer`) or offer. */
  offered: Promise<void>
  stop(): Promise<void>
}

const PROTOCOL = `${DEFAULT_PROTOCOL_PREFIX}/pieces/1.0.0`

/** Starts a rogue peer on loopback. */
export async function startRoguePeer(init: RoguePeerInit): Promise<RoguePeer> {
  const privateKey = await loadOrCreatePrivateKey(join(init.dir, `rogue-${init.mode}.key`))
  const node = new SwarmNode(
    { logger: init.logger },
    { listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], swarmKey: init.swarmKey, privateKey }
  )
  await node.start()
  const { data, digest, pieceSize } = init
  const count = pieceCount(data.length, pieceSize)
  const real = (i: number) => {
    const r = pieceRange(i, data.length, pieceSize)
    return data.slice(r.start, r.end)
  }
  const forged = (i: number) => {
    const bytes = real(i)
    for (let k = 0; k < bytes.length; k += 997) bytes[k] = (bytes[k] as number) ^ 0x5a
    return bytes
  }
  const stats = { hellos: 0, requests: 0 }
  let markOffered: () => void = () => {}
  const offered = new Promise<void>((r) => {
    markOffered = r
  })

  const send = (stream: Stream, msg: WireMessage) => {
    for (const part of encodeFrameParts(msg)) if (part.length > 0) stream.send(part)
  }
  const offerComplete = (stream: Stream) => {
    send(stream, { type: 'piece-list', bytes: encodePieceList(buildPieceList(digest, data, pieceSize)) })
    send(stream, { type: 'bitfield', bits: Bitfield.all(count).toBytes() })
  }

  const onHello = (stream: Stream) => {
    stats.hellos++
    switch (init.mode) {
      case 'forger':
        send(stream, { type: 'partial', size: data.length, pieceSize })
        for (let i = 0; i < count; i++) send(stream, { type: 'have', index: i, sha256: sha256Hex(forged(i)) })
        break
      case 'claimer':
        send(stream, { type: 'partial', size: data.length, pieceSize })
        for (let i = 0; i < count; i++) send(stream, { type: 'fetching', index: i })
        break
      default:
        offerComplete(stream)
    }
    markOffered()
  }

  const onRequest = (stream: Stream, index: number) => {
    stats.requests++
    switch (init.mode) {
      case 'stall':
      case 'claimer':
        return
      case 'reset':
        stream.abort(new Error('rogue peer resets the stream'))
        return
      case 'liar':
        send(stream, { type: 'reject', index, code: 'BLOB_UNKNOWN' })
        return
      case 'corrupt': {
        const bytes = real(index)
        bytes[0] = (bytes[0] as number) ^ 0xff
        send(stream, { type: 'piece', index, data: bytes })
        return
      }
      case 'forger':
        send(stream, { type: 'piece', index, data: forged(index) })
        return
      case 'oversized':
        // A length prefix of 2^28 - 1: past every frame limit of the protocol.
        stream.send(Uint8Array.of(0xff, 0xff, 0xff, 0x7f, 7))
        return
    }
  }

  await node.libp2p.handle(
    PROTOCOL,
    (stream: Stream) => {
      const decoder = new FrameDecoder()
      stream.addEventListener('message', (evt) => {
        try {
          decoder.push(evt.data)
          for (const msg of decoder.frames()) {
            if (msg.type === 'hello') {
              if (msg.digest === digest) onHello(stream)
              else send(stream, { type: 'reject', index: 0, code: 'BLOB_UNKNOWN' })
            } else if (msg.type === 'request') {
              onRequest(stream, msg.index)
            }
          }
        } catch (err) {
          stream.abort(err as Error)
        }
      })
    },
    { maxInboundStreams: 256 }
  )
  return {
    peerId: node.peerId,
    addresses: node.addresses(),
    stats,
    offered,
    stop: () => node.stop()
  }
}

/**
 * Writes the identity key an agent (or a `Swarm`) with store `storeDir` will use, chosen so that
 * its peer id sorts above (or below) each of `ids`: where two nodes claim the same piece, the
 * higher id is the one that gives way. Returns the peer id.
 */
export async function identitySorted(
  storeDir: string,
  where: 'above' | 'below',
  ids: readonly string[]
): Promise<string> {
  await mkdir(storeDir, { recursive: true })
  const path = join(storeDir, 'identity.key')
  for (;;) {
    const id = (await loadOrCreatePrivateKey(path)).publicKey.toString()
    if (ids.every((other) => (where === 'above' ? id > other : id < other))) return id
    await rm(path)
  }
}
