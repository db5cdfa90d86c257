/**
 * The swarm key: the pre-shared key of the libp2p private network (@libp2p/pnet). Every agent of
 * one fleet holds the same key; a peer without it cannot complete a connection (DESIGN.md §4).
 * The text format is the one go-ipfs and @libp2p/pnet use:
 *
 * ```
 * /key/swarm/psk/1.0.0/
 * /base16/
 * <64 hex digits: 32 random bytes>
 * ```
 */
import { randomBytes } from 'node:crypto'
import { SwarmKeyInvalidError } from '../errors.ts'
import { readOrCreateSecretFile } from './key-file.ts'

/** First line of a swarm key file. */
export const SWARM_KEY_TAG = '/key/swarm/psk/1.0.0/'
/** Second line: the encoding of the key. @libp2p/pnet decodes base16 only. */
export const SWARM_KEY_CODEC = '/base16/'
/** Length of the key itself, in bytes. */
export const SWARM_KEY_BYTES = 32

const HEX_RE = /^[0-9a-fA-F]{64}$/

/** A new random swarm key, as the text of a swarm key file. */
export function generateSwarmKey(): string {
  return format(randomBytes(SWARM_KEY_BYTES).toString('hex'))
}

/**
 * Validates swarm key text (or file bytes) and returns it in the canonical form
 * @libp2p/pnet's `preSharedKey({ psk })` expects (tag, codec and lower-case hex, as UTF-8 bytes).
 * Throws `SwarmKeyInvalidError` saying what is wrong; the message never contains the key.
 */
export function parseSwarmKey(text: string | Uint8Array): Uint8Array {
  const s = typeof text === 'string' ? text : new TextDecoder('utf-8', { fatal: false }).decode(text)
  const lines = s.split(/\r\n|\r|\n/).map((line) => line.trim())
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop()
  if (lines.length !== 3) {
    throw new SwarmKeyInvalidError(`swarm key must have 3 lines (tag, codec, key), found ${lines.length}`)
  }
  const [tag, codec, hex] = lines as [string, string, string]
  if (tag !== SWARM_KEY_TAG) {
    throw new SwarmKeyInvalidError(`swarm key must start with "${SWARM_KEY_TAG}"`)
  }
  if (codec !== SWARM_KEY_CODEC) {
    throw new SwarmKeyInvalidError(`swarm key codec must be "${SWARM_KEY_CODEC}" (the only one pnet reads)`)
  }
  if (!HEX_RE.test(hex)) {
    throw new SwarmKeyInvalidError(
      `swarm key must be ${SWARM_KEY_BYTES * 2} hex digits (${SWARM_KEY_BYTES} bytes)`
    )
  }
  return new TextEncoder().encode(format(hex.toLowerCase()))
}

/**
 * Reads the swarm key at `path`, or creates one there (mode 0600) when the file does not exist.
 * Returns the canonical key bytes (see `parseSwarmKey`). A key is created only for the first node
 * of a fleet: every other node must be given the same file.
 */
export async function loadOrCreateSwarmKey(path: string): Promise<Uint8Array> {
  const { bytes } = await readOrCreateSecretFile(path, () => new TextEncoder().encode(generateSwarmKey()))
  try {
    return parseSwarmKey(bytes)
  } catch (err) {
    throw new SwarmKeyInvalidError(`${path}: ${(err as Error).message}`, { cause: err })
  }
}

function format(hex: string): string {
  return `${SWARM_KEY_TAG}\n${SWARM_KEY_CODEC}\n${hex}`
}
