/**
 * Hyperlayers (block-level layers) on real LVM thin volumes, inside the User-Mode Linux guest
 * that `npm run test:vm` boots: made from two real thin volumes with thin_delta and by
 * comparing blocks, applied back byte for byte, refused when malformed or made against other
 * blocks, and pushed to a real registry (docker-registry, in the guest) from which a second
 * agent, with its own store and volume group on the guest's second disk, pulls and materializes
 * them. Refuses to run outside the guest.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, open, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { pino } from 'pino'
import { Agent } from '../../src/agent.ts'
import type { HeldMaterialization, MaterializeEvent } from '../../src/api/materialize-routes.ts'
import { hyperlayerDiffCommand, hyperlayerPushCommand } from '../../src/cli/hyperlayer-command.ts'
import { streamAgent } from '../../src/cli/socket-client.ts'
import { validateConfig } from '../../src/config/load.ts'
import { digestOf } from '../../src/content/digest.ts'
import { putVerifiedBlob } from '../../src/fetch/put-blob.ts'
import type { Materialization } from '../../src/interface/materializer.ts'
import { LvmHyperlayers } from '../../src/materialize/hyperlayer.ts'
import { HYPERLAYER_MEDIA_TYPE } from '../../src/materialize/hyperlayer-format.ts'
import { LvmThinMaterializer } from '../../src/materialize/lvm-thin.ts'
import type { LevelBlobStore } from '../../src/store/level-blob-store.ts'
import { startRegistry, type TestRegistry } from '../harness/registry.ts'
import { type TarSpec, tarOf } from '../unit/materialize/tars.ts'
import { assertInsideGuest, blockDevice, sha256Of, startGuestStore, wipeVolumeGroup } from './guest.ts'

const run = promisify(execFile)
const logger = pino({ level: process.env.SHOAL_VM_LOG ?? 'silent' })
const DISK_A = '/dev/ubda'
const DISK_B = '/dev/ubdb'
const VG_A = 'shoal-hl-a'
const VG_B = 'shoal-hl-b'
const BASE = '/tmp/shoal-vm-hyperlayer'
const SLOW = { timeout: 150_000 }
const MiB = 1024 * 1024
const BIG = 24 * MiB

const file = (name: string, data: string | Uint8Array, mode = 0o644): TarSpec => ({
  header: { name, type: 'file', mode, uid: 0, gid: 0 },
  data
})
const dir = (name: string): TarSpec => ({ header: { name, type: 'directory', mode: 0o755 } })

describe('hyperlayers on real LVM thin volumes (UML guest)', SLOW, () => {
  let store: LevelBlobStore
  let m: LvmThinMaterializer
  let tool: LvmHyperlayers
  let registry: TestRegistry | undefined
  let agent: Agent | undefined
  let treeLayer: string
  /** The tar-built volume, the volume a root hyperlayer of it made, and their bytes. */
  let p0: Materialization
  let root: { file: string; digest: string }
  let vr: Materialization
  let baseSha: string
  /** The changed child, its bytes, and the hyperlayer from the base to it. */
  const CHILD = 'hl-child'
  let childSha: string
  let delta: { file: string; digest: string }

  const lvName = (mz: Materialization) => blockDevice(mz).split('/').at(-1) as string
  const putFile = async (path: string) => {
    const bytes = await readFile(path)
    const digest = digestOf(bytes)
    await putVerifiedBlob(store, digest, bytes, { source: 'registry' })
    return digest
  }
  const volumes = async (vg: string) =>
    (await run('lvs', ['--noheadings', '-o', 'lv_name', vg])).stdout.split('\n').map((s) => s.trim())

  before(async () => {
    assertInsideGuest([DISK_A, DISK_B])
    store = await startGuestStore(BASE, logger)
    m = new LvmThinMaterializer(
      { store, logger },
      { vg: VG_A, pool: 'pool', device: DISK_A, volumeSize: '128M', mountDir: join(BASE, 'mnt') }
    )
    await m.start()
    tool = new LvmHyperlayers({ logger }, { vg: VG_A })
    const tar = await tarOf([
      dir('etc/'),
      file('etc/hostname', 'hyper\n'),
      dir('opt/'),
      dir('opt/app/'),
      file('opt/app/big.bin', randomBytes(BIG)),
      file('opt/app/run.sh', '#!/bin/sh\nexec big\n', 0o755)
    ])
    treeLayer = digestOf(tar)
    await putVerifiedBlob(store, treeLayer, tar, { source: 'registry' })
  })

  after(async () => {
    await agent?.stop()
    await registry?.stop()
    await m?.stop()
    await store?.stop()
    // The next test file makes its own volume group on the first disk.
    await wipeVolumeGroup(VG_A, DISK_A)
    await wipeVolumeGroup(VG_B, DISK_B)
  })

  it(
    'a root hyperlayer of a volume rebuilds it byte for byte, from thin_dump or by reading it',
    SLOW,
    async () => {
      p0 = await m.materialize([treeLayer])
      const viaThin = await tool.diff(undefined, lvName(p0), { method: 'thin_delta' })
      const viaCompare = await tool.diff(undefined, lvName(p0), { method: 'compare' })
      assert.equal(viaThin.method, 'thin_delta')
      assert.equal(viaCompare.method, 'compare')
      assert.deepEqual(viaThin.extents, viaCompare.extents, 'both ways find the same blocks')
      assert.equal(viaThin.header.fstype, 'ext4')
      assert.equal(viaThin.header.parent, undefined)
      assert.equal(viaThin.header.volumeSize, 128 * MiB)
      assert.ok(
        viaThin.header.dataBytes > BIG && viaThin.header.dataBytes < 64 * MiB,
        `${viaThin.header.dataBytes}`
      )

      const out = join(BASE, 'root.hl')
      const r = await hyperlayerDiffCommand('-', `${VG_A}/${lvName(p0)}`, {
        output: out,
        json: true,
        out: devNull()
      })
      root = { file: out, digest: r.digest }
      assert.equal(await putFile(out), root.digest)
      vr = await m.materialize([root.digest], { mediaTypes: { [root.digest]: HYPERLAYER_MEDIA_TYPE } })
      assert.deepEqual(vr.mount, { type: 'block', device: vr.layers[0]?.path, fstype: 'ext4' })
      baseSha = await sha256Of(blockDevice(p0))
      assert.equal(
        await sha256Of(blockDevice(vr)),
        baseSha,
        'the volume the root hyperlayer made is the original'
      )
      // The tar-built volume now has the identity of the root hyperlayer made from it: same bytes.
      const tags = (await run('lvs', ['--noheadings', '-o', 'lv_tags', blockDevice(p0)])).stdout
      assert.ok(tags.includes(`shoal.blocks=${root.digest.slice(7)}`), tags)
    }
  )

  it(
    'a small change to a large file ships as a few blocks and applies back byte-identical',
    SLOW,
    async () => {
      await run('lvcreate', ['-q', '-s', '-kn', '-n', CHILD, `${VG_A}/${lvName(vr)}`])
      const at = join(BASE, 'child')
      await mkdir(at, { recursive: true })
      await run('mount', [`/dev/${VG_A}/${CHILD}`, at])
      const fh = await open(join(at, 'opt/app/big.bin'), 'r+')
      await fh.write(randomBytes(100 * 1024), 0, 100 * 1024, 10 * MiB + 123)
      await fh.close()
      await writeFile(join(at, 'etc/hostname'), 'changed\n')
      await run('umount', [at])
      await run('lvchange', ['-pr', `${VG_A}/${CHILD}`])
      childSha = await sha256Of(`/dev/${VG_A}/${CHILD}`)
      assert.notEqual(childSha, baseSha)

      const viaThin = await tool.diff(lvName(vr), CHILD, { method: 'thin_delta' })
      const viaCompare = await tool.diff(lvName(vr), CHILD, { method: 'compare' })
      assert.equal(viaThin.method, 'thin_delta')
      assert.deepEqual(
        viaThin.extents,
        viaCompare.extents,
        'thin_delta and the fallback give the same extents'
      )
      assert.ok(viaThin.extents.length >= 2, 'the file and the small one')
      assert.ok(
        viaThin.header.dataBytes < 2 * MiB,
        `${viaThin.header.dataBytes} bytes of blocks for a 100 KiB change`
      )

      const out = join(BASE, 'delta.hl')
      const d = await hyperlayerDiffCommand(`${VG_A}/${lvName(vr)}`, `${VG_A}/${CHILD}`, {
        output: out,
        json: true,
        out: devNull()
      })
      delta = { file: out, digest: d.digest }
      assert.equal(d.method, 'thin_delta')
      assert.ok(d.size < 2 * MiB, `a ${d.size}-byte patch`)

      const applied = await tool.apply(streamFile(out), lvName(vr), 'hl-applied', { digest: delta.digest })
      assert.equal(await sha256Of(`/dev/${VG_A}/hl-applied`), childSha, 'parent + hyperlayer = child')
      assert.match(
        (await run('lvs', ['--noheadings', '-o', 'lv_attr', `${VG_A}/hl-applied`])).stdout,
        /^\s*Vri-a/
      )
      assert.equal(applied.identity.length, 64)
      await run('lvremove', ['-f', `${VG_A}/hl-applied`])
    }
  )

  it('refuses a truncated patch and one made against other blocks, leaving no volume', SLOW, async () => {
    const bytes = await readFile(delta.file)
    await assert.rejects(
      tool.apply(oneChunk(bytes.subarray(0, bytes.byteLength - 4096)), lvName(vr), 'hl-bad'),
      { code: 'HYPERLAYER_INVALID' }
    )
    // The child's blocks are not those the patch was made against (its parent's are).
    await assert.rejects(tool.apply(oneChunk(bytes), CHILD, 'hl-bad'), { code: 'HYPERLAYER_PARENT_MISMATCH' })
    await assert.rejects(tool.apply(oneChunk(bytes), undefined, 'hl-bad', { pool: 'pool' }), {
      code: 'HYPERLAYER_PARENT_MISMATCH'
    })
    const oversized = Buffer.from(bytes)
    oversized.writeBigUInt64BE(BigInt(256 * MiB), 16) // the header's volume size: not the parent's
    await assert.rejects(tool.apply(oneChunk(oversized), lvName(vr), 'hl-bad'), {
      code: 'HYPERLAYER_INVALID'
    })
    assert.ok(!(await volumes(VG_A)).includes('hl-bad'), 'no half-made volume is left')
  })

  it(
    'pushed to a registry, a second agent pulls the image and materializes the same bytes',
    SLOW,
    async () => {
      registry = await startRegistry({ dataDir: join(BASE, 'registry') })
      const ref = `${registry.host}/shoal/hyper:v2`
      const pushed = await hyperlayerPushCommand(delta.file, ref, {
        below: [root.file],
        json: true,
        out: devNull()
      })
      assert.deepEqual(
        pushed.layers.map((l) => [l.digest, l.mediaType]),
        [
          [root.digest, HYPERLAYER_MEDIA_TYPE],
          [delta.digest, HYPERLAYER_MEDIA_TYPE]
        ]
      )
      agent = new Agent(
        { logger },
        validateConfig({
          storeDir: join(BASE, 'agent-b'),
          socket: { path: join(BASE, 'agent-b.sock') },
          mirror: { enabled: false },
          registries: { [registry.host]: { url: registry.url } },
          materialize: { driver: 'lvm-thin', lvm: { volumeGroup: VG_B, device: DISK_B, volumeSize: '128M' } }
        })
      )
      await agent.start()
      let done: HeldMaterialization | undefined
      for await (const e of streamAgent<MaterializeEvent>(agent.config.socket.path, '/v1/materialize', {
        reference: ref
      })) {
        if (e.type === 'error') assert.fail(`${e.code}: ${e.message}`)
        if (e.type === 'done') done = e
      }
      assert.ok(done)
      const mz = done.materialization
      assert.equal(mz.driver, 'lvm-thin')
      assert.equal(mz.layers.length, 2)
      assert.ok(blockDevice(mz).startsWith(`/dev/${VG_B}/shoal-layer-`))
      assert.equal(
        await sha256Of(blockDevice(mz)),
        childSha,
        "the second node's volume is the child, byte for byte"
      )
      assert.equal(registry.bytesServed(delta.digest), (await readFile(delta.file)).byteLength)
      // The same chain, built from blocks on both nodes, has one block identity: the chain ID.
      const tags = (await run('lvs', ['--noheadings', '-o', 'lv_tags', blockDevice(mz)])).stdout
      assert.ok(tags.includes(`shoal.blocks=${blockDevice(mz).split('shoal-layer-')[1]}`), tags)
    }
  )
})

function devNull(): NodeJS.WritableStream {
  return { write: () => true } as unknown as NodeJS.WritableStream
}

async function* oneChunk(bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  yield bytes
}

async function* streamFile(path: string): AsyncGenerator<Uint8Array> {
  for await (const chunk of createReadStream(path)) yield chunk as Buffer
}
