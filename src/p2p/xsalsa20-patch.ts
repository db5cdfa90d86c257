import { createRequire } from 'node:module'

/**
 * A fix for xsalsa20 1.2.0, the cipher under @libp2p/pnet (the swarm key).
 *
 * All its instances share one WebAssembly memory, and each keeps a Uint8Array view of it. When
 * one instance grows the memory (an update larger than any before), the views of all the
 * others are detached and read as length 0, so each of them "grows" the memory again by its
 * full size on its next update, which detaches the first one's view, and so on: inbound and
 * outbound ciphers of a busy connection ping-pong the memory up to its 64 MB maximum, and the
 * process dies with `WebAssembly.Memory.grow(): Maximum memory size exceeded`. pnet hands the
 * cipher whole send queues (megabytes when pieces flow), so a swarm hits it within seconds.
 *
 * The patch makes `realloc` first refresh the view (a grow by zero pages) and grow only if the
 * refreshed memory is really too small. Applied once, on import.
 */
interface WasmCipher {
  _memory: { length: number }
  realloc(size: number): void
}

const require = createRequire(import.meta.url)
const XSalsa20 = require('xsalsa20') as new (
  nonce: Uint8Array,
  key: Uint8Array
) => {
  _xor: WasmCipher
  finalize(): void
}

let patched = false

/** Applies the fix; returns false when xsalsa20 runs without WebAssembly (nothing to fix). */
export function patchXsalsa20(): boolean {
  if (patched) return true
  const probe = new XSalsa20(new Uint8Array(24), new Uint8Array(32))
  const proto = Object.getPrototypeOf(probe._xor) as WasmCipher
  probe.finalize()
  if (typeof proto.realloc !== 'function') return false
  const grow = proto.realloc
  proto.realloc = function (this: WasmCipher, size: number) {
    // With `_memory.length === size` the original grows by zero pages and takes a fresh view.
    this._memory = { length: size }
    grow.call(this, size)
    if (size >= this._memory.length) grow.call(this, size)
  }
  patched = true
  return true
}

patchXsalsa20()
