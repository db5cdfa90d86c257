/**
 * The LVM thin half of `npm run bench:materialize`, run inside the User-Mode Linux guest
 * (scripts/vm/run-in-uml.sh) by test/bench/materialize.ts, never directly: it makes a volume
 * group on the guest's scratch disk. Reads the plan (a JSON file the host wrote), prints one
 * `BENCH_RESULT <json>` line. Everything measured here runs under UML, where each LVM command
 * costs 0.1-1 s and I/O goes through the UML kernel: the figures are not native ones.
 */
import { execFile } from 'node:child_process'
import { mkdir, open, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { pino } from 'pino'
import { systemClock } from '../../src/clock.ts'
import { digestOf } from '../../src/content/digest.ts'
import { putVerifiedBlob } from '../../src/fetch/put-blob.ts'
import { LvmHyperlayers } from '../../src/materialize/hyperlayer.ts'
import { HYPERLAYER_MEDIA_TYPE } from '../../src/materialize/hyperlayer-format.ts'
import { LvmThinMaterializer } from '../../src/materialize/lvm-thin.ts'
import { LevelBlobStore } from '../../src/store/level-blob-store.ts'
import { assertInsideGuest, sha256Of } from '../vm/guest.ts'
import { bigFileLayers, type GuestPlan, type GuestResult, median } from './materialize-plan.ts'

const run = promisify(execFile)
const logger = pino({ level: 'silent' })
const DISK = '/dev/ubda'
const VG = 'shoal-bench'
const BASE = '/tmp/shoal-bench-guest'

async function main(): Promise<void> {
  assertInsideGuest([DISK])
  const plan = JSON.parse(await readFile(process.argv[2] as string, 'utf8')) as GuestPlan
  await rm(BASE, { recursive: true, force: true })
  await mkdir(BASE, { recursive: true })
  const store = new LevelBlobStore(
    { clock: systemClock, logger },
    { root: join(BASE, 'store'), quotaBytes: 8 * 1024 ** 3 }
  )
  await store.start()
  const m = new LvmThinMaterializer(
    { store, logger },
    { vg: VG, pool: 'pool', device: DISK, volumeSize: '2G', mountDir: join(BASE, 'mnt') }
  )
  await m.start()
  const put = async (bytes: Uint8Array) => {
    const digest = digestOf(bytes)
    await putVerifiedBlob(store, digest, bytes, { source: 'registry' })
    return digest
  }
  const timed = async (f: () => Promise<unknown>) => {
    const t = performance.now()
    await f()
    return performance.now() - t
  }

  // 1. The test image onto LVM thin: every layer a snapshot of the one below, applied in place.
  for (const l of plan.image.layers) await put(await readFile(l.path))
  const digests = plan.image.layers.map((l) => l.digest)
  const imageMs: number[] = []
  for (let i = 0; i < plan.rounds; i++) {
    imageMs.push(await timed(() => m.materialize(digests)))
    await m.release(digests)
    await m.prune()
    log(`image onto LVM thin, round ${i + 1}: ${Math.round(imageMs.at(-1) as number)} ms`)
  }

  // 2. A small change to a large file: the hyperlayer against the layer holding the whole file.
  const layers = await bigFileLayers(plan.bigFile)
  const base = await put(layers.base)
  const fileLayer = await put(layers.changed)
  const parent = await m.materialize([base])
  const parentLv = (parent.mount as { device: string }).device.split('/').at(-1) as string
  const child = 'bench-child'
  await run('lvcreate', ['-q', '-s', '-kn', '-n', child, `${VG}/${parentLv}`])
  const at = join(BASE, 'child')
  await mkdir(at, { recursive: true })
  await run('mount', [`/dev/${VG}/${child}`, at])
  const fh = await open(join(at, layers.path), 'r+')
  await fh.write(layers.patch, 0, layers.patch.byteLength, layers.patchOffset)
  await fh.close()
  await run('umount', [at])
  await run('lvchange', ['-pr', `${VG}/${child}`])
  const tool = new LvmHyperlayers({ logger }, { vg: VG })
  let diffMs = 0
  let hyper = new Uint8Array(0)
  diffMs = await timed(async () => {
    const diff = await tool.diff(parentLv, child, { method: 'thin_delta' })
    const parts: Uint8Array[] = []
    for await (const c of diff.stream()) parts.push(c)
    hyper = Buffer.concat(parts)
  })
  const hyperDigest = await put(hyper)
  const mediaTypes = { [hyperDigest]: HYPERLAYER_MEDIA_TYPE }
  const childSha = await sha256Of(`/dev/${VG}/${child}`)
  const hyperMs: number[] = []
  const tarMs: number[] = []
  let identical = false
  for (let i = 0; i < plan.rounds; i++) {
    hyperMs.push(await timed(() => m.materialize([base, hyperDigest], { mediaTypes })))
    if (i === 0) {
      const top = (await m.materialize([base, hyperDigest], { mediaTypes })).mount as { device: string }
      identical = (await sha256Of(top.device)) === childSha
      await m.release([base, hyperDigest])
    }
    await m.release([base, hyperDigest])
    await m.prune()
    tarMs.push(await timed(() => m.materialize([base, fileLayer])))
    await m.release([base, fileLayer])
    await m.prune()
    log(
      `hyperlayer ${Math.round(hyperMs.at(-1) as number)} ms, file layer ${Math.round(tarMs.at(-1) as number)} ms`
    )
  }
  await m.release([base])
  await m.stop()
  await store.stop()
  const result: GuestResult = {
    image: { ms: imageMs, medianMs: median(imageMs) },
    bigFile: {
      diffMs,
      hyperlayerBytes: hyper.byteLength,
      fileLayerBytes: layers.changed.byteLength,
      hyperlayerMs: hyperMs,
      fileLayerMs: tarMs,
      hyperlayerMedianMs: median(hyperMs),
      fileLayerMedianMs: median(tarMs),
      identical
    },
    kernel: (await run('uname', ['-r'])).stdout.trim()
  }
  process.stdout.write(`BENCH_RESULT ${JSON.stringify(result)}\n`)
}

function log(line: string): void {
  process.stderr.write(`[guest] ${line}\n`)
}

await main()
