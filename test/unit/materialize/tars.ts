import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { type Header, pack } from 'tar-stream'

const run = promisify(execFile)

/** One entry of a test tar: a header as tar-stream's `pack` takes it, and its data. */
export interface TarSpec {
  header: Partial<Header> & { name: string; pax?: Record<string, string> }
  data?: string | Uint8Array
}

/** A tar (no compression) of the entries, made with tar-stream. */
export async function tarOf(entries: TarSpec[]): Promise<Buffer> {
  const p = pack()
  const chunks: Buffer[] = []
  p.on('data', (c: unknown) => chunks.push(c as Buffer))
  const ended = new Promise<void>((resolve, reject) => {
    p.on('end', () => resolve())
    p.on('error', reject)
  })
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => {
      const data = typeof e.data === 'string' ? Buffer.from(e.data) : (e.data ?? Buffer.alloc(0))
      p.entry({ mtime: new Date(0), ...e.header } as Header, data, (err) => (err ? reject(err) : resolve()))
    })
  }
  p.finalize()
  await ended
  return Buffer.concat(chunks)
}

/** Overwrites a field of the 512-byte header at `offset` and fixes the header's checksum. */
export function patchHeader(tar: Buffer, offset: number, field: number, bytes: Uint8Array): Buffer {
  const b = Buffer.from(tar)
  b.set(bytes, offset + field)
  b.fill(0x20, offset + 148, offset + 156)
  let sum = 0
  for (let i = 0; i < 512; i++) sum += b[offset + i] as number
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, offset + 148, 'ascii')
  return b
}

/** Offset of the size field in a tar header. */
export const SIZE_FIELD = 124

/** A base-256 (GNU) size field holding `n` (negative: two's complement). */
export function base256(n: bigint): Uint8Array {
  const out = new Uint8Array(12)
  let v = n < 0n ? (1n << 88n) + n : n
  for (let i = 11; i > 0; i--) {
    out[i] = Number(v & 0xffn)
    v >>= 8n
  }
  out[0] = n < 0n ? 0xff : 0x80
  return out
}

/** The bytes in chunks of `size`: exercises every boundary the readers must handle. */
export async function* chunked(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.byteLength; i += size) yield bytes.subarray(i, i + size)
}

/** True when the program is on PATH. */
export async function have(program: string): Promise<boolean> {
  return run('sh', ['-c', `command -v ${program}`]).then(
    () => true,
    () => false
  )
}

/** Compresses with the `zstd` CLI (the reference encoder, not the decoder under test). */
export async function zstdOf(bytes: Uint8Array): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      'zstd',
      ['-q', '-c', '-3'],
      { encoding: 'buffer', maxBuffer: 1 << 30 },
      (err, out) => (err ? reject(err) : resolve(out))
    )
    child.stdin?.end(bytes)
  })
}

/** One extended attribute of `path` (not following a symlink), or undefined. */
export async function getXattr(path: string, name: string): Promise<string | undefined> {
  try {
    const { stdout } = await run('getfattr', ['-h', '--only-values', '-n', name, path])
    return stdout
  } catch {
    return undefined
  }
}
