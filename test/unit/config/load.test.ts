import assert from 'node:assert/strict'
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { loadConfig, validateConfig } from '../../../src/config/load.ts'
import { DEFAULT_PIECE_SIZE, DEFAULT_STORE_QUOTA, MiB } from '../../../src/constants.ts'

describe('config', () => {
  it('fills every default when nothing is given', async () => {
    const c = await loadConfig({ env: {} })
    assert.equal(c.store.quota, DEFAULT_STORE_QUOTA)
    assert.equal(c.store.pieceSize, DEFAULT_PIECE_SIZE)
    assert.equal(c.mirror.listen, '127.0.0.1:5050')
    assert.equal(c.socket.mode, 0o660)
    assert.deepEqual(c.registries, {})
  })

  it('layers file, then environment, then flags', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-cfg-'))
    const file = join(dir, 'c.yaml')
    await writeFile(
      file,
      'storeDir: /from/file\nstore: { quota: 1GiB, pieceSize: 8MiB }\nregistries:\n  r.example: { url: "https://r.example" }\n'
    )
    const c = await loadConfig({
      file,
      env: { SHOAL_STORE_DIR: '/from/env', SHOAL_STORE_QUOTA: '2GiB' },
      overrides: { 'store.quota': '3GiB' }
    })
    assert.equal(c.storeDir, '/from/env')
    assert.equal(c.store.quota, 3 * 1024 * MiB)
    assert.equal(c.store.pieceSize, 8 * MiB)
    assert.equal(c.registries['r.example']?.url, 'https://r.example')
  })

  it('reports every problem at once with its path', () => {
    assert.throws(
      () =>
        validateConfig({
          store: { quota: 'lots', pieceSize: '1KiB' },
          mirror: { listen: 'nowhere' },
          registries: { x: { url: 'https://a', layout: '/b' } },
          bogus: 1
        }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'CONFIG_INVALID')
        for (const path of ['store.quota', 'store.pieceSize', 'mirror.listen', 'registries.x', 'bogus']) {
          assert.match(err.message, new RegExp(path.replace('.', '\\.')))
        }
        return true
      }
    )
  })

  it('refuses an unreadable or non-mapping file with a clear message', async () => {
    await assert.rejects(loadConfig({ file: '/nonexistent/shoal.yaml', env: {} }), /cannot read config file/)
    const dir = await mkdtemp(join(tmpdir(), 'shoal-cfg-'))
    await writeFile(join(dir, 'list.yaml'), '- a\n- b\n')
    await assert.rejects(loadConfig({ file: join(dir, 'list.yaml'), env: {} }), /mapping at the top level/)
    await writeFile(join(dir, 'bad.yaml'), 'a: [\n')
    await assert.rejects(loadConfig({ file: join(dir, 'bad.yaml'), env: {} }), /not valid YAML/)
  })

  it('loads the example configuration shipped in deploy/ as it is', async () => {
    const file = new URL('../../../deploy/shoal.example.yaml', import.meta.url).pathname
    const c = await loadConfig({ file, env: {} })
    assert.equal(c.materialize.driver, 'local-cache')
    assert.deepEqual(c.registries, {})
  })
})
