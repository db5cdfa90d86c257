import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { pino } from 'pino'
import type { CommandOutput, CommandRunner } from '../../../src/materialize/command-runner.ts'
import { LvmHyperlayers } from '../../../src/materialize/hyperlayer.ts'

const logger = pino({ level: 'silent' })
const CHUNK = 65536
const SIZE = 16 * CHUNK

/**
 * Plays lvs, lvchange, dmsetup and thin_delta for `LvmHyperlayers.diff`; the volumes' "devices"
 * are plain files, which is all the block comparison reads.
 */
class ScriptedLvm implements CommandRunner {
  readonly commands: string[] = []
  thinDelta: string | Error = ''
  reserveFails = false
  parentAttr = 'Vri-a-tz--'
  parentTags = ''
  constructor(readonly dir: string) {}

  async run(file: string, args: readonly string[]): Promise<CommandOutput> {
    const line = [file, ...args].join(' ')
    this.commands.push(line)
    if (file === 'lvs') {
      const lv = (name: string, attr: string, extra: Record<string, string>) => ({
        lv_name: name,
        lv_attr: attr,
        lv_tags: '',
        origin: '',
        pool_lv: 'pool',
        lv_size: String(SIZE),
        thin_id: '',
        chunk_size: '0',
        lv_dm_path: join(this.dir, name),
        ...extra
      })
      const rows = [
        lv('parent', this.parentAttr, { thin_id: '1', lv_tags: this.parentTags }),
        lv('child', 'Vri-a-tz--', { thin_id: '2', lv_tags: 'shoal.fstype=ext4' }),
        lv('pool', 'twi-aotz--', {
          pool_lv: '',
          chunk_size: String(CHUNK),
          lv_dm_path: '/dev/mapper/vg-pool'
        }),
        lv('[pool_tmeta]', 'ewi-ao----', { pool_lv: '', lv_dm_path: '/dev/mapper/vg-pool_tmeta' })
      ]
      return { stdout: JSON.stringify({ report: [{ lv: rows }] }) }
    }
    if (file === 'dmsetup' && args.includes('reserve_metadata_snap') && this.reserveFails) {
      throw new Error('dmsetup failed: File exists')
    }
    if (file === 'thin_delta') {
      if (this.thinDelta instanceof Error) throw this.thinDelta
      return { stdout: this.thinDelta }
    }
    return { stdout: '' }
  }
}

const delta = (ranges: string) =>
  `<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="0">
  <diff left="1" right="2">${ranges}</diff>
</superblock>`

describe('LvmHyperlayers.diff (scripted LVM, files as devices)', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-hldiff-'))
    const parent = Buffer.alloc(SIZE, 1)
    const child = Buffer.from(parent)
    child.fill(2, 3 * CHUNK + 10, 3 * CHUNK + 20)
    child.fill(0, 9 * CHUNK, 10 * CHUNK)
    await writeFile(join(dir, 'parent'), parent)
    await writeFile(join(dir, 'child'), child)
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('asks thin_delta on a reserved metadata snapshot, releases it, and keeps only blocks that differ', async () => {
    const lvm = new ScriptedLvm(dir)
    // thin_delta says more than changed (a remapped chunk with equal bytes): the bytes decide.
    lvm.thinDelta = delta(
      '<different begin="3" length="1"/><same begin="4" length="2"/><different begin="6" length="1"/><right_only begin="9" length="1"/>'
    )
    lvm.parentTags = 'shoal.blocks=' + 'c'.repeat(64)
    const tool = new LvmHyperlayers({ logger, runner: lvm }, { vg: 'vg' })
    const d = await tool.diff('parent', 'child')
    assert.equal(d.method, 'thin_delta')
    assert.deepEqual(d.extents, [
      { block: 3, count: 1, kind: 'data' },
      { block: 9, count: 1, kind: 'zero' }
    ])
    assert.deepEqual(d.header, {
      blockSize: CHUNK,
      volumeSize: SIZE,
      extentCount: 2,
      dataBytes: CHUNK,
      fstype: 'ext4',
      parent: 'c'.repeat(64)
    })
    const thin = lvm.commands.filter((c) => !c.startsWith('lvs'))
    assert.deepEqual(thin, [
      'dmsetup message vg-pool-tpool 0 reserve_metadata_snap',
      `thin_delta -m --snap1 1 --snap2 2 /dev/mapper/vg-pool_tmeta`,
      'dmsetup message vg-pool-tpool 0 release_metadata_snap'
    ])
    const compared = await tool.diff('parent', 'child', { method: 'compare' })
    assert.deepEqual(compared.extents, d.extents, 'the fallback finds the same extents')
  })

  it('releases the metadata snapshot when thin_delta fails, and falls back to comparing', async () => {
    const lvm = new ScriptedLvm(dir)
    lvm.thinDelta = new Error('thin_delta failed: bad superblock')
    lvm.parentTags = 'shoal.blocks=' + 'c'.repeat(64)
    const tool = new LvmHyperlayers({ logger, runner: lvm }, { vg: 'vg' })
    const d = await tool.diff('parent', 'child')
    assert.equal(d.method, 'compare')
    assert.equal(d.extents.length, 2)
    assert.ok(lvm.commands.includes('dmsetup message vg-pool-tpool 0 release_metadata_snap'))
    await assert.rejects(tool.diff('parent', 'child', { method: 'thin_delta' }), /bad superblock/)
  })

  it('never reads a metadata snapshot it did not reserve', async () => {
    const lvm = new ScriptedLvm(dir)
    lvm.reserveFails = true
    lvm.parentTags = 'shoal.blocks=' + 'c'.repeat(64)
    const d = await new LvmHyperlayers({ logger, runner: lvm }, { vg: 'vg' }).diff('parent', 'child')
    assert.equal(d.method, 'compare')
    assert.ok(!lvm.commands.some((c) => c.startsWith('thin_delta') || c.includes('release_metadata_snap')))
  })

  it('gives a parent without a block identity a random one, and refuses a writable volume', async () => {
    const lvm = new ScriptedLvm(dir)
    lvm.thinDelta = delta('<different begin="3" length="1"/>')
    const tool = new LvmHyperlayers({ logger, runner: lvm }, { vg: 'vg' })
    const d = await tool.diff('parent', 'child')
    const tag = lvm.commands.find((c) => c.startsWith('lvchange --addtag shoal.blocks='))
    assert.ok(tag, lvm.commands.join('\n'))
    assert.equal(tag, `lvchange --addtag shoal.blocks=${d.header.parent} vg/parent`)
    lvm.parentAttr = 'Vwi-a-tz--'
    await assert.rejects(tool.diff('parent', 'child'), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'BAD_REQUEST')
      assert.match(err.message, /parent is writable: make it read-only/)
      return true
    })
    await assert.rejects(tool.diff('parent', 'nothing'), /no volume nothing/)
  })
})
