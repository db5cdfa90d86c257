import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { generateSwarmKey, loadOrCreateSwarmKey, parseSwarmKey } from '../../../src/p2p/swarm-key.ts'

function code(c: string) {
  return (err: unknown) => (err as { code?: string }).code === c
}

const HEX = 'dffb7e3135399a8b1612b2aaca1c36a3a8ac2cd0cca51ceeb2ced87d308cac6d'
const text = (s: Uint8Array) => new TextDecoder().decode(s)

describe('swarm key', () => {
  it('generates keys in the pnet text format, each different', () => {
    const a = generateSwarmKey()
    const b = generateSwarmKey()
    assert.match(a, /^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}$/)
    assert.notEqual(a, b)
  })

  it('round-trips generate and parse', () => {
    const key = generateSwarmKey()
    assert.equal(text(parseSwarmKey(key)), key)
    assert.equal(text(parseSwarmKey(new TextEncoder().encode(key))), key)
  })

  it('normalizes CRLF, surrounding spaces, a trailing newline and upper-case hex', () => {
    const canonical = `/key/swarm/psk/1.0.0/\n/base16/\n${HEX}`
    assert.equal(
      text(parseSwarmKey(`/key/swarm/psk/1.0.0/\r\n/base16/\r\n ${HEX.toUpperCase()} \r\n`)),
      canonical
    )
    assert.equal(text(parseSwarmKey(`${canonical}\n\n`)), canonical)
  })

  it('refuses bad input with SWARM_KEY_INVALID and never echoes the key', () => {
    const bad = [
      '',
      HEX,
      `/key/swarm/psk/1.0.0/\n/base16/`,
      `/key/swarm/psk/2.0.0/\n/base16/\n${HEX}`,
      `/key/swarm/psk/1.0.0/\n/base64/\n${HEX}`,
      `/key/swarm/psk/1.0.0/\n/base16/\n${HEX.slice(2)}`,
      `/key/swarm/psk/1.0.0/\n/base16/\n${HEX}00`,
      `/key/swarm/psk/1.0.0/\n/base16/\n${HEX.slice(1)}g`,
      `/key/swarm/psk/1.0.0/\n/base16/\n${HEX}\nextra`
    ]
    for (const input of bad) {
      assert.throws(() => parseSwarmKey(input), code('SWARM_KEY_INVALID'), JSON.stringify(input))
      try {
        parseSwarmKey(input)
      } catch (err) {
        assert.ok(!(err as Error).message.includes(HEX.slice(4, 40)), 'message leaks the key')
      }
    }
  })

  it('creates a key file once (mode 0600) and reads it back afterwards', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-swarm-key-'))
    try {
      const path = join(dir, 'sub', 'swarm.key')
      const first = await loadOrCreateSwarmKey(path)
      const again = await loadOrCreateSwarmKey(path)
      assert.deepEqual(again, first)
      assert.equal(text(first), await readFile(path, 'utf8'))
      assert.equal((await stat(path)).mode & 0o777, 0o600)
      const [x, y] = await Promise.all([
        loadOrCreateSwarmKey(join(dir, 'race.key')),
        loadOrCreateSwarmKey(join(dir, 'race.key'))
      ])
      assert.deepEqual(x, y)

      const broken = join(dir, 'broken.key')
      await writeFile(broken, 'not a key')
      await assert.rejects(loadOrCreateSwarmKey(broken), code('SWARM_KEY_INVALID'))
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
