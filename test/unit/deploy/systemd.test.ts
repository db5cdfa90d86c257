import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmod, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { loadConfig } from '../../../src/config/load.ts'
import { parseDuration } from '../../../src/config/units.ts'

const UNIT = fileURLToPath(new URL('../../../deploy/systemd/shoal.service', import.meta.url))
const EXAMPLE = fileURLToPath(new URL('../../../deploy/shoal.example.yaml', import.meta.url))

/** A unit file's directives by section; a directive given twice keeps every value. */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>()
  let current: Map<string, string[]> | undefined
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue
    const section = /^\[(.+)\]$/.exec(line)
    if (section) {
      current = new Map()
      sections.set(section[1] as string, current)
      continue
    }
    const i = line.indexOf('=')
    assert.ok(current && i > 0, `not a directive: ${line}`)
    const key = line.slice(0, i).trim()
    current.set(key, [...(current.get(key) ?? []), line.slice(i + 1).trim()])
  }
  return sections
}

let root: string
let unitText: string
let service: Map<string, string[]>

/** `systemd-analyze <args>` against the unit as `shoal.service` in a scratch root. */
async function analyze(text: string, ...args: string[]) {
  await writeFile(join(root, 'etc/systemd/system/shoal.service'), text)
  return spawnSync('systemd-analyze', [...args, `--root=${root}`, 'shoal.service'], { encoding: 'utf8' })
}

before(async () => {
  unitText = await readFile(UNIT, 'utf8')
  service = parseUnit(unitText).get('Service') ?? new Map()
  // A root with the system's own units (targets the unit orders against) and stand-ins for the
  // binaries its Exec lines name: verify checks that each exists and is executable.
  root = await mkdtemp(join(tmpdir(), 'shoal-unit-'))
  await mkdir(join(root, 'etc/systemd/system'), { recursive: true })
  await cp('/usr/lib/systemd/system', join(root, 'usr/lib/systemd/system'), { recursive: true })
  for (const [key, values] of service) {
    if (!key.startsWith('Exec')) continue
    for (const line of values) {
      const binary = line.replace(/^[-@+!:]+/, '').split(' ')[0] as string
      assert.ok(binary.startsWith('/'), `${key}: ${binary} is not an absolute path`)
      await mkdir(join(root, dirname(binary)), { recursive: true })
      await writeFile(join(root, binary), '#!/bin/sh\n')
      await chmod(join(root, binary), 0o755)
    }
  }
})

after(async () => {
  await rm(root, { recursive: true, force: true })
})

describe('deploy/systemd/shoal.service', () => {
  it('passes systemd-analyze verify without a warning', async () => {
    const r = await analyze(unitText, 'verify')
    assert.equal(r.status, 0, r.stderr)
    assert.equal(r.stderr.trim(), '')
  })

  it('the check catches a misspelled directive and a bad value', async () => {
    let r = await analyze(unitText.replace('ProtectSystem=strict', 'ProtectSystm=strict'), 'verify')
    assert.match(r.stderr, /Unknown key 'ProtectSystm'/)
    r = await analyze(unitText.replace('ProtectSystem=strict', 'ProtectSystem=strictly'), 'verify')
    assert.match(r.stderr, /protect system value/)
  })

  it('keeps its exposure level low (systemd-analyze security, offline)', async () => {
    // The threshold counts tenths: 40 is an exposure of 4.0 ("OK"); this unit scores 3.5.
    const r = await analyze(unitText, 'security', '--offline=yes', '--threshold=40')
    assert.equal(r.status, 0, r.stdout.split('\n').slice(-3).join('\n'))
    const weak = await analyze(
      unitText.replace(/^ProtectSystem=strict\n/m, ''),
      'security',
      '--offline=yes',
      '--threshold=35'
    )
    assert.notEqual(weak.status, 0, 'without ProtectSystem the exposure must rise')
  })

  it('serves the socket and the store where the example config puts them', async () => {
    const c = await loadConfig({ file: EXAMPLE, env: {} })
    assert.deepEqual(service.get('RuntimeDirectory'), [dirname(c.socket.path).replace('/run/', '')])
    assert.deepEqual(service.get('StateDirectory'), [c.storeDir.replace('/var/lib/', '')])
    assert.deepEqual(service.get('ConfigurationDirectory'), ['shoal'])
    assert.match(service.get('ExecStart')?.[0] ?? '', / agent --config \/etc\/shoal\/agent\.yaml$/)
    // Long enough for the agent's own drain before SIGKILL.
    const stop = parseDuration(service.get('TimeoutStopSec')?.[0] ?? '') ?? 0
    assert.ok(stop > c.shutdown.drainTimeout, `TimeoutStopSec ${stop} ms`)
    // systemctl reload sends what the agent reloads on.
    assert.deepEqual(service.get('ExecReload'), ['/bin/kill -HUP $MAINPID'])
  })

  it('hardening leaves what materializing and LVM need', () => {
    const caps = (service.get('CapabilityBoundingSet') ?? []).join(' ').split(/\s+/)
    for (const cap of [
      'CAP_SYS_ADMIN',
      'CAP_MKNOD',
      'CAP_CHOWN',
      'CAP_FOWNER',
      'CAP_SETFCAP',
      'CAP_IPC_LOCK'
    ]) {
      assert.ok(caps.includes(cap), `CapabilityBoundingSet lacks ${cap}`)
    }
    const devices = service.get('DeviceAllow') ?? []
    assert.ok(devices.includes('block-device-mapper rw'), devices.join(', '))
    assert.ok(devices.includes('/dev/mapper/control rw'), devices.join(', '))
    const writable = (service.get('ReadWritePaths') ?? []).join(' ').split(/\s+/)
    for (const p of ['-/etc/lvm', '-/run/lvm']) assert.ok(writable.includes(p), `ReadWritePaths lacks ${p}`)
    assert.deepEqual(service.get('SystemCallFilter'), ['@system-service @mount'])
    // Each of these would break extraction, LVM or V8.
    for (const off of ['PrivateDevices', 'RestrictSUIDSGID', 'MemoryDenyWriteExecute', 'PrivateNetwork']) {
      assert.equal(service.get(off), undefined, `${off} must stay unset`)
    }
  })
})
