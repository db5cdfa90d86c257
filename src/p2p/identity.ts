/**
 * The node's libp2p identity. The peer id is derived from the private key, so the key is
 * persisted: a restarted agent keeps its peer id, and the provider records other nodes hold for
 * it stay valid.
 */
import '../polyfill.ts'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { ConfigInvalidError } from '../errors.ts'
import { readOrCreateSecretFile } from './key-file.ts'

/**
 * Reads the protobuf-encoded private key at `path`, or generates an Ed25519 key and writes it
 * there (mode 0600, written atomically) when the file does not exist. Throws
 * `ConfigInvalidError` when the file exists but does not hold a private key.
 */
export async function loadOrCreatePrivateKey(path: string): Promise<PrivateKey> {
  // generateKeyPair is async but the file helper wants bytes: make the key first. Losing a race
  // with another process only wastes this key; the file that landed first is the one used.
  const fresh = await generateKeyPair('Ed25519')
  const { bytes, created } = await readOrCreateSecretFile(path, () => privateKeyToProtobuf(fresh))
  if (created) return fresh
  try {
    return privateKeyFromProtobuf(bytes)
  } catch (err) {
    throw new ConfigInvalidError(`${path} does not hold a libp2p private key: ${(err as Error).message}`, {
      cause: err
    })
  }
}
