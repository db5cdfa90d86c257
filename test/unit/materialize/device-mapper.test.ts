import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { assertDeviceMapper, hasDeviceMapper } from '../../../src/materialize/device-mapper.ts'

describe('device-mapper probe', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-dm-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('finds device-mapper in /proc/misc, and only as a device name', async () => {
    const with_ = join(dir, 'with')
    const without = join(dir, 'without')
    await writeFile(with_, '  58 network_throughput\n236 device-mapper\n183 hw_random\n')
    await writeFile(without, '  58 network_throughput\n183 hw_random\n 60 not-device-mapper\n')
    assert.equal(await hasDeviceMapper(with_), true)
    assert.equal(await hasDeviceMapper(without), false)
    assert.equal(await hasDeviceMapper(join(dir, 'missing')), false, 'no /proc/misc: no device-mapper')
    await assertDeviceMapper(with_)
    await assert.rejects(assertDeviceMapper(without), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'DEVICE_MAPPER_MISSING')
      assert.match(err.message, /modprobe dm-thin-pool/)
      return true
    })
  })
})
