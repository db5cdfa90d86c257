/**
 * Benchmark: how long materializing takes, in one run.
 *   - the ~110 MB, 5-layer test image (`multi:v1`) into the local cache (extracted layer
 *     directories for overlayfs), on this machine;
 *   - the same image onto LVM thin volumes, inside the User-Mode Linux guest
 *     (scripts/vm/run-in-uml.sh), since this kernel has no device-mapper: those figures are
 *     under UML (LVM commands cost 0.1-1 s there, I/O goes through the UML kernel);
 *   - a small change to a large file on LVM thin, in the guest: applying the hyperlayer (the
 *     changed blocks) against applying the file layer that ships the whole changed file, in
 *     time and in bytes shipped; and, on this machine, extracting that file layer into the
 *     local cache.
 * Ratios are between figures of the same run.
 *
 *   npm run bench:materialize
 *   ROUNDS=5 BIG_MB=128 npm run bench:materialize
 *
 * Writes test/bench/results/materialize.json and a chart beside it.
 */
import { spawn } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { pino } from 'pino'
import { systemClock } from '../../src/clock.ts'
import { digestOf } from '../../src/content/digest.ts'
import { putVerifiedBlob } from '../../src/fetch/put-blob.ts'
import { LocalCacheMaterializer } from '../../src/materialize/local-cache.ts'
import { LevelBlobStore } from '../../src/store/level-blob-store.ts'
import { buildTestImages } from '../harness/images.ts'
import { barChartSvg } from './chart.ts'
import { bigFileLayers, type GuestPlan, type GuestResult, median } from './materialize-plan.ts'

const ROUNDS = Number(process.env.ROUNDS ?? 3)
const IMAGE = process.env.IMAGE ?? 'multi:v1'
const BIG_MB = Number(process.env.BIG_MB ?? 64)
const CHANGE_KB = Number(process.env.CHANGE_KB ?? 100)
const MiB = 1024 * 1024
const logger = pino({ level: 'silent' })
const project = fileURLToPath(new URL('../../', import.meta.url))

const timed = async (f: () => Promise<unknown>) => {
  const t = performance.now()
  await f()
  return performance.now() - t
}
const say = (line: string) => process.stderr.write(`${line}\n`)

/** Runs the guest half and returns what it printed on its `BENCH_RESULT` line. */
async function runGuest(plan: GuestPlan, work: string): Promise<GuestResult> {
  const planFile = join(work, 'plan.json')
  await writeFile(planFile, JSON.stringify(plan))
  const child = spawn(
    join(project, 'scripts/vm/run-in-uml.sh'),
    [
      '--timeout',
      '900',
      '--mem',
      '2048M',
      '--disk',
      '12G',
      '--',
      'node',
      '--import',
      'tsx',
      'test/bench/materialize-guest.ts',
      planFile
    ],
    { cwd: project, stdio: ['ignore', 'pipe', 'inherit'] }
  )
  let out = ''
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString()
    process.stderr.write(c)
  })
  const status = await new Promise<number | null>((resolve) => child.on('close', resolve))
  const line = out.split('\n').find((l) => l.startsWith('BENCH_RESULT '))
  if (status !== 0 || !line) throw new Error(`the guest half failed (status ${status})`)
  return JSON.parse(line.slice('BENCH_RESULT '.length)) as GuestResult
}

async function main(): Promise<void> {
  const images = await buildTestImages()
  const image = images.images[IMAGE]
  if (!image) throw new Error(`no test image ${IMAGE}`)
  const work = await mkdtemp(join(tmpdir(), 'shoal-bench-materialize-'))
  try {
    const layers = image.layers.map((l) => ({
      digest: l.digest,
      size: l.size,
      path: join(image.layout, 'blobs', 'sha256', l.digest.slice(7))
    }))
    const imageBytes = layers.reduce((n, l) => n + l.size, 0)
    const store = new LevelBlobStore(
      { clock: systemClock, logger },
      { root: join(work, 'store'), quotaBytes: 8 * 1024 ** 3 }
    )
    await store.start()
    const put = async (bytes: Uint8Array) => {
      const digest = digestOf(bytes)
      await putVerifiedBlob(store, digest, bytes, { source: 'registry' })
      return digest
    }
    for (const l of layers) await put(await readFile(l.path))
    const digests = layers.map((l) => l.digest)

    // The local cache, on this machine: a fresh cache directory per round.
    const cacheMs: number[] = []
    const fileLayerCacheMs: number[] = []
    const big = await bigFileLayers({ size: BIG_MB * MiB, change: CHANGE_KB * 1024 })
    const fileLayer = await put(big.changed)
    for (let i = 0; i < ROUNDS; i++) {
      const dir = join(work, `cache-${i}`)
      const cache = new LocalCacheMaterializer({ store, logger }, { dir })
      await cache.start()
      cacheMs.push(await timed(() => cache.materialize(digests)))
      fileLayerCacheMs.push(await timed(() => cache.materializeLayer(fileLayer)))
      await cache.stop()
      await rm(dir, { recursive: true, force: true })
      say(
        `local cache, round ${i + 1}: image ${Math.round(cacheMs.at(-1) as number)} ms, file layer ${Math.round(fileLayerCacheMs.at(-1) as number)} ms`
      )
    }
    await store.stop()

    // LVM thin, in the UML guest.
    const guest = await runGuest(
      {
        rounds: ROUNDS,
        image: { name: IMAGE, layers },
        bigFile: { size: BIG_MB * MiB, change: CHANGE_KB * 1024 }
      },
      work
    )
    const b = guest.bigFile
    const summary = {
      image: IMAGE,
      imageBytes,
      layers: layers.length,
      rounds: ROUNDS,
      machine:
        'host: 2 cores; LVM figures: User-Mode Linux guest (scripts/vm/run-in-uml.sh) on the same host',
      umlKernel: guest.kernel,
      localCache: { ms: cacheMs.map(Math.round), medianMs: Math.round(median(cacheMs)) },
      lvmThinUml: { ms: guest.image.ms.map(Math.round), medianMs: Math.round(guest.image.medianMs) },
      lvmOverCacheRatio: round2(guest.image.medianMs / median(cacheMs)),
      bigFile: {
        fileBytes: BIG_MB * MiB,
        changedBytes: CHANGE_KB * 1024,
        hyperlayerBytes: b.hyperlayerBytes,
        fileLayerBytes: b.fileLayerBytes,
        bytesRatio: round2(b.fileLayerBytes / b.hyperlayerBytes),
        diffMsUml: Math.round(b.diffMs),
        hyperlayerApplyMsUml: Math.round(b.hyperlayerMedianMs),
        fileLayerApplyMsUml: Math.round(b.fileLayerMedianMs),
        applySpeedup: round2(b.fileLayerMedianMs / b.hyperlayerMedianMs),
        fileLayerLocalCacheMs: Math.round(median(fileLayerCacheMs)),
        hyperlayerVolumeIdentical: b.identical
      }
    }
    const dir = new URL('./results/', import.meta.url)
    await mkdir(dir, { recursive: true })
    await writeFile(new URL('materialize.json', dir), `${toJson(summary)}\n`)
    await writeFile(
      new URL('materialize.svg', dir),
      await barChartSvg({
        title: `Materialize (median of ${ROUNDS}; LVM figures under User-Mode Linux)`,
        unit: 's',
        groups: [
          {
            name: `${IMAGE}, ${(imageBytes / 1e6).toFixed(0)} MB, ${layers.length} layers`,
            bars: [
              { label: 'local cache (host)', value: median(cacheMs) / 1000 },
              { label: 'LVM thin (UML)', value: guest.image.medianMs / 1000 }
            ]
          },
          {
            name: `${CHANGE_KB} KiB changed in a ${BIG_MB} MiB file`,
            bars: [
              { label: 'file layer, local cache (host)', value: median(fileLayerCacheMs) / 1000 },
              { label: 'file layer, LVM thin (UML)', value: b.fileLayerMedianMs / 1000 },
              { label: 'hyperlayer, LVM thin (UML)', value: b.hyperlayerMedianMs / 1000 }
            ]
          }
        ]
      })
    )
    process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`)
  } finally {
    await rm(work, { recursive: true, force: true })
  }
}

/** JSON as the formatter (biome) lays it out: arrays of numbers on one line. */
function toJson(value: unknown): string {
  return JSON.stringify(value, null, 2).replace(
    /\[\s*(-?[\d.]+(?:,\s*-?[\d.]+)*)\s*\]/g,
    (_, items: string) => `[${items.split(/,\s*/).join(', ')}]`
  )
}

function round2(n: number): number {
  return Math.round(n * 100) / 100
}

await main()
