import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { loadConfig, validateConfig } from '../../../src/config/load.ts'

describe('config: materialize', () => {
  it('defaults to the local cache, under the store directory unless a dir is given', async () => {
    const c = await loadConfig({ env: {} })
    assert.deepEqual(c.materialize, { driver: 'local-cache' })
    const d = validateConfig({ materialize: { dir: '/var/cache/shoal' } })
    assert.deepEqual(d.materialize, { driver: 'local-cache', dir: '/var/cache/shoal' })
  })

  it('takes lvm-thin with a volume group, filling in the pool defaults', () => {
    const c = validateConfig({ materialize: { driver: 'lvm-thin', lvm: { volumeGroup: 'vg0' } } })
    assert.deepEqual(c.materialize, {
      driver: 'lvm-thin',
      lvm: { volumeGroup: 'vg0', pool: 'shoal-pool', poolSize: '95%FREE', volumeSize: '10G', fstype: 'ext4' }
    })
    const full = validateConfig({
      materialize: {
        driver: 'lvm-thin',
        dir: '/var/lib/shoal-lvm',
        lvm: {
          volumeGroup: 'shoal-vg',
          pool: 'thin_pool',
          device: '/dev/nvme1n1',
          poolSize: '200G',
          volumeSize: '20G',
          fstype: 'xfs'
        }
      }
    })
    assert.deepEqual(full.materialize.lvm, {
      volumeGroup: 'shoal-vg',
      pool: 'thin_pool',
      device: '/dev/nvme1n1',
      poolSize: '200G',
      volumeSize: '20G',
      fstype: 'xfs'
    })
  })

  it('refuses lvm-thin without a volume group, naming the key', () => {
    assert.throws(
      () => validateConfig({ materialize: { driver: 'lvm-thin' } }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'CONFIG_INVALID')
        assert.match(
          err.message,
          /materialize\.lvm: materialize\.driver lvm-thin needs materialize\.lvm\.volumeGroup/
        )
        return true
      }
    )
  })

  it('refuses bad LVM names, sizes, devices and file systems, each with its path', () => {
    assert.throws(
      () =>
        validateConfig({
          materialize: {
            driver: 'lvm-thin',
            lvm: {
              volumeGroup: '-vg',
              pool: 'a/b',
              device: 'sdb',
              poolSize: 'lots',
              volumeSize: '50%FREE',
              fstype: 'btrfs',
              thinpool: 'x'
            }
          }
        }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'CONFIG_INVALID')
        for (const path of ['volumeGroup', 'pool', 'device', 'poolSize', 'volumeSize', 'fstype']) {
          assert.ok(err.message.includes(`  materialize.lvm.${path}:`), `${path}: ${err.message}`)
        }
        assert.match(err.message, /thinpool/)
        assert.match(err.message, /not starting with -/)
        return true
      }
    )
  })

  it('keeps a materialize.lvm section given with the local cache (switching drivers keeps it)', () => {
    const c = validateConfig({ materialize: { lvm: { volumeGroup: 'vg0' } } })
    assert.equal(c.materialize.driver, 'local-cache')
    assert.equal(c.materialize.lvm?.volumeGroup, 'vg0')
  })

  it('refuses an unknown driver, an empty dir and unknown keys', () => {
    assert.throws(
      () => validateConfig({ materialize: { driver: 'zfs', dir: '', mountpoint: '/x' } }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'CONFIG_INVALID')
        for (const path of ['materialize.driver', 'materialize.dir', 'materialize']) {
          assert.ok(err.message.includes(`  ${path}:`), err.message)
        }
        return true
      }
    )
  })
})
