import { createHash } from 'node:crypto'
import { promisify } from 'node:util'
import { gzip } from 'node:zlib'
import { tarOf } from '../unit/materialize/tars.ts'

const gz = promisify(gzip)

/** What the host tells the guest half of the materialize benchmark. */
export interface GuestPlan {
  rounds: number
  image: { name: string; layers: { digest: string; size: number; path: string }[] }
  bigFile: BigFileSpec
}

/** The "small change to a large file" case. */
export interface BigFileSpec {
  /** Bytes of the large file. */
  size: number
  /** Bytes changed in place, in its middle. */
  change: number
}

/** What the guest measured (all under User-Mode Linux). */
export interface GuestResult {
  image: { ms: number[]; medianMs: number }
  bigFile: {
    diffMs: number
    hyperlayerBytes: number
    fileLayerBytes: number
    hyperlayerMs: number[]
    fileLayerMs: number[]
    hyperlayerMedianMs: number
    fileLayerMedianMs: number
    /** The volume the hyperlayer made is byte-identical to the changed volume. */
    identical: boolean
  }
  kernel: string
}

/** Deterministic incompressible bytes (sha256 in counter mode): the same on host and guest. */
function pseudoRandom(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size)
  for (let i = 0, at = 0; at < size; i++, at += 32) {
    createHash('sha256').update(`${seed}:${i}`).digest().copy(out, at)
  }
  return out
}

/**
 * The layers of the big-file case, identical wherever they are made: a base layer with the
 * large file (and a few small ones), and the file layer that ships the changed file whole, as
 * an image build would (`COPY` of the new file: a layer holding it all, gzip-compressed).
 */
export async function bigFileLayers(spec: BigFileSpec) {
  const path = 'opt/data/model.bin'
  const big = pseudoRandom('big-file', spec.size)
  const patch = pseudoRandom('change', spec.change)
  const patchOffset = Math.floor(spec.size / 2 / 4096) * 4096 + 123
  const changed = Buffer.from(big)
  patch.copy(changed, patchOffset)
  const entry = (name: string, data: Uint8Array | string) => ({
    header: { name, type: 'file' as const, mode: 0o644, uid: 0, gid: 0 },
    data
  })
  const dir = (name: string) => ({ header: { name, type: 'directory' as const, mode: 0o755 } })
  const base = await gz(
    await tarOf([
      dir('opt/'),
      dir('opt/data/'),
      entry(path, big),
      entry('opt/data/README', 'model\n'),
      dir('etc/')
    ])
  )
  const changedLayer = await gz(await tarOf([dir('opt/'), dir('opt/data/'), entry(path, changed)]))
  return { path, base, changed: changedLayer, patch, patchOffset }
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2
}
