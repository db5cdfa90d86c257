import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it } from 'node:test'
import type { CommandRunner } from '../../../src/materialize/command-runner.ts'
import { Iproute } from '../../../src/sim/netns/iproute.ts'
import { newRunPrefix, prefixOf, runNames } from '../../../src/sim/netns/names.ts'
import { payloadBytes } from '../../../src/sim/netns/tc.ts'
import { generateImage, layerSizes } from '../../../src/sim/protocol/image.ts'
import { protocolShape } from '../../../src/sim/protocol/scenario-shape.ts'
import { parseScenario } from '../../../src/sim/scenario.ts'

/** A runner that fails every command the way execFileRunner does, with `cause`. */
function failing(cause: Partial<NodeJS.ErrnoException>, stderr = ''): CommandRunner {
  return {
    run: async (file) => {
      throw new Error(`${file} failed: ${stderr || cause.message}`, { cause })
    }
  }
}

describe('Iproute errors', () => {
  it('names a missing program IPROUTE_MISSING', async () => {
    const ip = new Iproute({ runner: failing({ code: 'ENOENT', message: 'spawn ip ENOENT' }) })
    await assert.rejects(ip.check(), { code: 'IPROUTE_MISSING' })
  })

  it('names a refusal NETNS_PERMISSION', async () => {
    const ip = new Iproute({
      runner: failing({ code: 1 as unknown as string }, 'mount --make-shared: Operation not permitted')
    })
    await assert.rejects(ip.addNetns('shl0000-x'), { code: 'NETNS_PERMISSION' })
  })

  it('names any other failure NETNS_SETUP_FAILED, with the command', async () => {
    const ip = new Iproute({ runner: failing({}, 'Cannot find device "nope"') })
    await assert.rejects(ip.setUp('shl0000-x', 'nope'), (err: Error & { code: string }) => {
      assert.equal(err.code, 'NETNS_SETUP_FAILED')
      assert.match(err.message, /ip -n shl0000-x link set nope up/)
      return true
    })
  })
})

describe('run names', () => {
  it('fit the kernel limit of 15 characters and carry the prefix', () => {
    const n = runNames(newRunPrefix())
    for (const name of [
      n.hub,
      n.bridge,
      n.registry.dev,
      n.registry.hubDev,
      n.node(9999).dev,
      n.node(9999).hubDev
    ]) {
      assert.ok(name.length <= 15, name)
      assert.equal(prefixOf(name), n.prefix)
    }
    assert.throws(() => runNames('x-'))
  })
})

describe('generated image', () => {
  it('has layers of exactly the asked sizes, each a tar, with digests of their bytes', () => {
    const sizes = layerSizes(3 * 2 ** 20 + 700, 2)
    assert.equal(sizes.reduce((a, b) => a + b, 0) % 512, 0)
    const image = generateImage(sizes, 1)
    assert.deepEqual(
      image.layers.map((l) => l.data.length),
      sizes
    )
    for (const l of image.layers) {
      assert.equal(l.digest, `sha256:${createHash('sha256').update(l.data).digest('hex')}`)
      assert.equal(l.data.subarray(257, 262).toString(), 'ustar')
    }
    assert.notEqual(image.layers[0]?.digest, image.layers[1]?.digest)
    assert.equal(generateImage(sizes, 1).manifest.digest, image.manifest.digest, 'same seed, same image')
    assert.notEqual(generateImage(sizes, 2).manifest.digest, image.manifest.digest)
  })
})

describe('protocol shape of a scenario', () => {
  it('computes T_min as the model does and keeps the agent to its piece size', () => {
    const s = parseScenario({
      name: 'x',
      seed: 1,
      topology: {
        nodes: 4,
        upload: ['1MiB', '1MiB', '2MiB', '2MiB'],
        download: '4MiB',
        registryUpload: '2MiB'
      },
      image: { size: '8MiB', pieceSize: '1MiB' },
      shoal: { registryWindow: 3, patience: 10, registryFetchers: 2, sendBuffer: 0.2 }
    })
    const shape = protocolShape(s)
    // The model's send buffer is the links' queue at this level.
    assert.equal(shape.queueMs, 200)
    const F = 8 * 2 ** 20
    assert.equal(shape.imageBytes, F)
    assert.equal(shape.tMin, Math.max(F / (2 * 2 ** 20), F / (4 * 2 ** 20), (4 * F) / (8 * 2 ** 20)))
    assert.deepEqual(shape.arrivals, [0, 0, 0, 0])
    assert.deepEqual(shape.agentConfig, {
      store: { pieceSize: 2 ** 20 },
      fetch: { registryConcurrency: 3 },
      swarm: { registryFetchers: 2 }
    })
    assert.deepEqual(shape.ignored, ['patience'])
  })

  it('takes the headers of every frame off a counter for the payload', () => {
    assert.equal(payloadBytes({ bytes: 1514 * 10, packets: 10, drops: 0 }), 14480)
  })
})
