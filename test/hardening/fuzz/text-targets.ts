/**
 * Fuzz targets for what arrives as text or JSON: image references and platforms (runtimes, the
 * CLI), manifests and indexes (registries, layouts, peers), Range headers (runtimes), config
 * files and swarm keys (operators).
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { parseRange } from '../../../src/api/http.ts'
import { parseConfigText, validateConfig } from '../../../src/config/load.ts'
import {
  BadRequestError,
  ConfigInvalidError,
  InvalidManifestError,
  InvalidReferenceError,
  NoMatchingPlatformError,
  RangeNotSatisfiableError,
  SwarmKeyInvalidError,
  UnsupportedMediaTypeError
} from '../../../src/errors.ts'
import { parseManifest, selfDescribedMediaType } from '../../../src/oci/manifest.ts'
import { formatPlatform, parsePlatform, selectManifest } from '../../../src/oci/platform.ts'
import { formatReference, parseReference } from '../../../src/oci/reference.ts'
import { generateSwarmKey, parseSwarmKey } from '../../../src/p2p/swarm-key.ts'
import type { FuzzTarget } from './engine.ts'

const words = (...w: string[]) => w.map((s) => Buffer.from(s))
const HEX = 'a'.repeat(64)
const DIGEST = `sha256:${HEX}`

export const referenceTarget: FuzzTarget = {
  name: 'reference',
  run(data) {
    const text = data.toString('utf8')
    // A platform string is read by the same API call as the reference: fuzz both on each input.
    try {
      const p = parsePlatform(text)
      assert.deepEqual(parsePlatform(formatPlatform(p)), p)
    } catch (err) {
      if (!(err instanceof InvalidReferenceError)) throw err
    }
    const ref = parseReference(text)
    // What parses must print back to a reference that parses to the same thing.
    assert.deepEqual(parseReference(formatReference(ref)), ref)
  },
  expected: (err) => err instanceof InvalidReferenceError,
  seeds: words(
    'busybox',
    'docker.io/library/busybox:latest',
    'index.docker.io/user/app:1.0',
    `localhost:5000/a/b@${DIGEST}`,
    `ghcr.io/org/repo/sub:v1.2-rc_3@${DIGEST}`,
    '[::1]:5000/x/y:z',
    '127.0.0.1:5000/shoal/app',
    'linux/arm64/v8',
    'a__b--c.d/e'
  ),
  dictionary: words(
    '/',
    ':',
    '@',
    'sha256:',
    HEX,
    'localhost',
    'docker.io/',
    'library/',
    '[::1]',
    '__',
    '--'
  ),
  maxLength: 700,
  covers: /\/src\/(oci\/(reference|platform)|content\/digest)\.ts$/
}

const CONTENT_TYPES = [
  undefined,
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
  'application/json; charset=utf-8'
]

const desc = (mediaType: string, size = 10) => ({ mediaType, digest: DIGEST, size })
const json = (o: unknown) => Buffer.from(`\0${JSON.stringify(o)}`)

export const manifestTarget: FuzzTarget = {
  name: 'manifest',
  run(data) {
    // The first byte picks the Content-Type the bytes came with.
    const contentType = CONTENT_TYPES[(data[0] ?? 0) % CONTENT_TYPES.length]
    const bytes = data.subarray(1)
    const m = parseManifest(bytes, contentType)
    const all = m.kind === 'manifest' ? [m.config, ...m.layers] : m.manifests
    for (const d of all) {
      assert.match(d.digest, /^sha256:[a-f0-9]{64}$/)
      assert.ok(Number.isSafeInteger(d.size) && d.size >= 0)
    }
    if (m.kind === 'index') selectManifest(m, { os: 'linux', architecture: 'amd64' })
    selfDescribedMediaType(bytes)
  },
  expected: (err) =>
    err instanceof InvalidManifestError ||
    err instanceof UnsupportedMediaTypeError ||
    err instanceof NoMatchingPlatformError,
  seeds: [
    json({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: desc('application/vnd.oci.image.config.v1+json'),
      layers: [desc('application/vnd.oci.image.layer.v1.tar+gzip', 1000)]
    }),
    json({
      schemaVersion: 2,
      manifests: [
        {
          ...desc('application/vnd.oci.image.manifest.v1+json'),
          platform: { os: 'linux', architecture: 'amd64' }
        },
        {
          ...desc('application/vnd.oci.image.manifest.v1+json'),
          platform: { os: 'linux', architecture: 'arm64', variant: 'v8' }
        }
      ]
    }),
    json({ schemaVersion: 2, config: desc('x'), layers: [] }),
    json({ schemaVersion: 1, name: 'x', fsLayers: [] }),
    json({
      schemaVersion: 2,
      mediaType: 'application/vnd.docker.distribution.manifest.list.v2+json',
      manifests: []
    })
  ],
  dictionary: words(
    '"schemaVersion":2',
    '"mediaType":',
    '"manifests":[',
    '"layers":[',
    '"config":{',
    '"platform":{"os":"linux","architecture":"amd64"}',
    `"digest":"${DIGEST}"`,
    '"size":',
    '9007199254740993',
    '-1',
    '1e400',
    '{}',
    '[]',
    'null',
    '\\u0000',
    '\\ud800'
  ),
  maxLength: 4096,
  covers: /\/src\/(oci\/(manifest|platform|media-types)|content\/digest)\.ts$/
}

export const rangeTarget: FuzzTarget = {
  name: 'http-range',
  run(data) {
    // Six bytes of blob size, then the header as a runtime sends it.
    const size = data.length >= 6 ? data.readUIntBE(0, 6) : 0
    const header = data.subarray(6).toString('latin1')
    const r = parseRange(header, size)
    if (r === undefined) return
    assert.ok(Number.isSafeInteger(r.start) && Number.isSafeInteger(r.end))
    assert.ok(r.start >= 0 && r.start < r.end && r.end <= size, `range ${r.start}-${r.end} of ${size}`)
  },
  expected: (err) => err instanceof BadRequestError || err instanceof RangeNotSatisfiableError,
  seeds: [
    Buffer.concat([Buffer.from([0, 0, 0, 1, 0, 0]), Buffer.from('bytes=0-99')]),
    Buffer.concat([Buffer.from([0, 0, 0, 1, 0, 0]), Buffer.from('bytes=-500')]),
    Buffer.concat([Buffer.from([0, 0, 0, 1, 0, 0]), Buffer.from('bytes=100-')]),
    Buffer.concat([Buffer.from([0, 0, 0, 1, 0, 0]), Buffer.from('bytes=0-1,5-9')])
  ],
  dictionary: words('bytes=', '-', ',', '0', '99999999999999999999', ' '),
  maxLength: 200,
  covers: /\/src\/api\/http\.ts$/
}

const EXAMPLE_CONFIG = readFileSync(new URL('../../../deploy/shoal.example.yaml', import.meta.url))

export const configTarget: FuzzTarget = {
  name: 'config',
  run(data) {
    validateConfig(parseConfigText(data.toString('utf8'), 'fuzzed config'), 'fuzzed config')
  },
  expected: (err) => err instanceof ConfigInvalidError,
  seeds: [
    EXAMPLE_CONFIG,
    Buffer.from('storeDir: /var/lib/shoal\nstore:\n  quota: 20GiB\n  pieceSize: 4MiB\n'),
    Buffer.from(
      'registries:\n  r.example:\n    url: https://r.example\n    username: u\n    password: p\n' +
        'swarm:\n  enabled: true\n  listen: ["/ip4/0.0.0.0/tcp/4001"]\n  bootstrap: []\n'
    ),
    Buffer.from('{"mirror": {"listen": "127.0.0.1:5050"}, "log": {"level": "debug"}}')
  ],
  dictionary: words(
    '\n  ',
    ': ',
    '- ',
    '&a ',
    '*a',
    '!!binary ',
    '{',
    '[',
    '"',
    'GiB',
    'ms',
    'true',
    '~',
    '<<: ',
    '__proto__',
    'constructor'
  ),
  maxLength: 8192,
  covers: /\/src\/config\/|\/node_modules\/(yaml|zod)\//
}

export const swarmKeyTarget: FuzzTarget = {
  name: 'swarm-key',
  run(data) {
    const key = parseSwarmKey(data)
    // The canonical form parses to itself.
    assert.deepEqual(parseSwarmKey(key), key)
  },
  expected: (err) => err instanceof SwarmKeyInvalidError,
  seeds: [Buffer.from(generateSwarmKey()), Buffer.from(generateSwarmKey().replace(/\n/g, '\r\n'))],
  dictionary: words('/key/swarm/psk/1.0.0/', '/base16/', '/base64/', '\n', '\r\n', ' '),
  maxLength: 300,
  covers: /\/src\/p2p\/swarm-key\.ts$/
}
