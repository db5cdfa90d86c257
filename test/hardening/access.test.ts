/**
 * Who can reach what. A node without the swarm key (another key, or none: plain libp2p) cannot
 * connect and learns nothing of the swarm; a peer without access to a private blob gets nothing
 * of it however many proofs it makes up; the agent's unix socket, store and layer cache are closed
 * to other users of the node; the mirror listens on loopback only; and no log line, status or
 * metric carries registry credentials. Swarm admission and private blobs between agents are
 * tested in test/integration (swarm/agents, swarm/private-layers, p2p/private-blobs); these
 * tests add what an attacker on the network or on the node would try.
 */
import '../../src/polyfill.ts'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmod, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { networkInterfaces, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { gzipSync } from 'node:zlib'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { pino } from 'pino'
import { streamAgent } from '../../src/cli/socket-client.ts'
import { systemClock } from '../../src/clock.ts'
import { validateConfig } from '../../src/config/load.ts'
import { MIN_PIECE_SIZE, MiB } from '../../src/constants.ts'
import { accessKey, accessProof } from '../../src/content/access.ts'
import { digestOf } from '../../src/content/digest.ts'
import { DhtContentRouting } from '../../src/p2p/content-routing.ts'
import { loadOrCreatePrivateKey } from '../../src/p2p/identity.ts'
import { PieceExchange } from '../../src/p2p/piece-exchange.ts'
import { generateSwarmKey, parseSwarmKey } from '../../src/p2p/swarm-key.ts'
import { SwarmNode } from '../../src/p2p/swarm-node.ts'
import { encodeFrame, FrameDecoder, type WireMessage } from '../../src/p2p/wire.ts'
import { pushImage } from '../../src/registry/registry-push.ts'
import { MemoryBlobStore } from '../../src/store/memory-blob-store.ts'
import { pullDone, removeAgentDir, startAgent, type TestAgent } from '../harness/agent.ts'
import { makeBlob, seedBlob } from '../harness/blobs.ts'
import { REGISTRY_PASSWORD, REGISTRY_USER, startRegistry, type TestRegistry } from '../harness/registry.ts'
import { tarOf } from '../unit/materialize/tars.ts'
import { scaled } from './scale.ts'
import { tally } from './tally.ts'

const logger = pino({ level: 'silent' })
const LISTEN = ['/ip4/127.0.0.1/tcp/0']
const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
const NOBODY = 65534

/** Runs a small script as the unprivileged user `nobody`; returns what it printed. */
function asNobody(script: string, ...args: string[]): string {
  const r = spawnSync(
    'setpriv',
    [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, '-e', script, ...args],
    { encoding: 'utf8', timeout: 10_000 }
  )
  return `${r.stdout}${r.stderr}`.trim()
}

describe('a node without the swarm key', { timeout: 60_000 }, () => {
  let dir: string
  const swarmKey = parseSwarmKey(generateSwarmKey())
  const nodes: SwarmNode[] = []
  let a: SwarmNode
  let b: SwarmNode
  const digest = digestOf(randomBytes(64))

  const node = async (name: string, key: Uint8Array, bootstrap: string[] = []) => {
    const privateKey = await loadOrCreatePrivateKey(join(dir, `${name}.key`))
    const n = new SwarmNode({ logger }, { listen: LISTEN, bootstrap, swarmKey: key, privateKey })
    await n.start()
    nodes.push(n)
    return n
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-access-swarm-'))
    a = await node('a', swarmKey)
    b = await node('b', swarmKey, a.addresses())
    for (let i = 0; i < 100 && (a.routingTableSize() === 0 || b.routingTableSize() === 0); i++)
      await sleep(50)
    assert.ok((await new DhtContentRouting({ node: a, logger }).provide(digest)) >= 1)
  })

  after(async () => {
    await Promise.all(nodes.map((n) => n.stop()))
    await rm(dir, { recursive: true, force: true })
  })

  it('with another key: no connection either way, no peer, no DHT record learned', async () => {
    const outsider = await node('outsider', parseSwarmKey(generateSwarmKey()), a.addresses())
    const quick = () => ({ signal: AbortSignal.timeout(1500) })
    await assert.rejects(outsider.dial(a.addresses()[0]!, quick()))
    await assert.rejects(a.dial(outsider.addresses()[0]!, quick()))
    const found = await new DhtContentRouting({ node: outsider, logger }).findProviders(digest, {
      timeoutMs: 2000
    })
    assert.deepEqual(found, [])
    assert.deepEqual(outsider.peers(), [])
    assert.equal(outsider.routingTableSize(), 0)
    // The outsider and `a` know of each other only from the addresses they were given; of `b`
    // the outsider has learned nothing, nor `b` of it.
    assert.ok(!outsider.knownPeers().includes(b.peerId), 'the outsider learned of b')
    assert.ok(!b.knownPeers().includes(outsider.peerId), 'b heard of the outsider')
    for (const n of [a, b]) assert.ok(!n.peers().includes(outsider.peerId))
    tally('hostile inputs tried', 3, import.meta.url)
  })

  it('with no key at all (plain libp2p, Noise and yamux): no connection', async () => {
    const plain = await createLibp2p({
      addresses: { listen: LISTEN },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()]
    })
    try {
      await assert.rejects(plain.dial(multiaddr(a.addresses()[0]!), quick()))
      await assert.rejects(a.dial(plain.getMultiaddrs()[0]!.toString(), quick()))
      assert.ok(!a.peers().includes(plain.peerId.toString()))
    } finally {
      await plain.stop()
    }
    tally('hostile inputs tried', 2, import.meta.url)
  })

  it('garbage on the swarm port is dropped and the node stays in its swarm', async () => {
    const port = Number(a.addresses()[0]!.split('/')[4])
    const n = scaled(20)
    for (let i = 0; i < n; i++) {
      await new Promise<void>((resolve) => {
        const s = connect({ host: '127.0.0.1', port })
        s.on('error', () => resolve())
        s.on('close', () => resolve())
        s.on('connect', () => s.end(randomBytes(1 + ((i * 7919) % 100_000))))
        setTimeout(() => s.destroy(), 3000)
      })
    }
    tally('hostile inputs tried', n, import.meta.url)
    assert.ok(a.peers().includes(b.peerId))
    const found = await new DhtContentRouting({ node: b, logger }).findProviders(digest, { timeoutMs: 5000 })
    assert.ok(found.some((p) => p.peerId === a.peerId))
  })

  const quick = () => ({ signal: AbortSignal.timeout(1500) })
})

describe('a peer without access to a private blob', { timeout: 60_000 }, () => {
  let dir: string
  const swarmKey = parseSwarmKey(generateSwarmKey())
  const nodes: SwarmNode[] = []
  let server: SwarmNode
  let stranger: SwarmNode
  let serverX: PieceExchange
  const secret = makeBlob(2 * MIN_PIECE_SIZE + 5)
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, layers: [{ digest: secret.digest }] }))

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-access-private-'))
    for (const name of ['server', 'stranger']) {
      const privateKey = await loadOrCreatePrivateKey(join(dir, `${name}.key`))
      const n = new SwarmNode({ logger }, { listen: LISTEN, bootstrap: [], swarmKey, privateKey })
      await n.start()
      nodes.push(n)
    }
    ;[server, stranger] = nodes as [SwarmNode, SwarmNode]
    const store = new MemoryBlobStore({ clock: systemClock, logger }, { quotaBytes: 16 * MiB })
    await store.start()
    await seedBlob(store, secret, { private: true })
    await store.grantAccess(secret.digest, { key: accessKey(manifest) })
    serverX = new PieceExchange({ node: server, store, logger })
    await serverX.start()
  })

  after(async () => {
    await serverX.stop()
    await Promise.all(nodes.map((n) => n.stop()))
    await rm(dir, { recursive: true, force: true })
  })

  /** Every frame the server sends after a hello with `proof`, until it closes the stream. */
  async function hello(digest: string, proof?: Uint8Array): Promise<WireMessage[]> {
    const stream = await stranger.libp2p.dialProtocol(multiaddr(server.addresses()[0]!), serverX.protocol)
    const decoder = new FrameDecoder()
    const got: WireMessage[] = []
    const ended = new Promise<void>((resolve) => {
      stream.addEventListener('message', (evt) => {
        decoder.push(evt.data)
        for (const m of decoder.frames()) got.push(m)
      })
      stream.addEventListener('remoteCloseWrite', () => resolve(), { once: true })
      stream.addEventListener('close', () => resolve(), { once: true })
    })
    stream.send(encodeFrame({ type: 'hello', digest, ...(proof && { proof }) }))
    await Promise.race([ended, sleep(3000)])
    await stream.close().catch(() => stream.abort(new Error('done')))
    return got
  }

  it('gets exactly what a blob the server does not hold gets, for every proof it makes up', async () => {
    const unknown = await hello(digestOf(randomBytes(10)))
    assert.deepEqual(unknown, [{ type: 'reject', index: 0, code: 'BLOB_UNKNOWN' }])
    const n = scaled(60)
    const otherKey = accessKey(Buffer.from('{"schemaVersion":2,"layers":[]}'))
    for (let i = 0; i < n; i++) {
      const proof =
        i % 3 === 0
          ? randomBytes(32)
          : i % 3 === 1
            ? accessProof(otherKey, secret.digest, stranger.peerId, server.peerId)
            : // A real proof, but made for another peer: replayed by the stranger.
              accessProof(accessKey(manifest), secret.digest, server.peerId, stranger.peerId)
      assert.deepEqual(await hello(secret.digest, i === 0 ? undefined : proof), unknown)
    }
    tally('hostile inputs tried', n, import.meta.url)
    // The owner of the manifest is served, through the same server.
    const served = await hello(
      secret.digest,
      accessProof(accessKey(manifest), secret.digest, stranger.peerId, server.peerId)
    )
    assert.equal(served[0]?.type, 'piece-list')
  })
})

describe('the agent on its node', { timeout: 180_000 }, () => {
  let open: string
  let registry: TestRegistry
  let agent: TestAgent
  let image: string

  before(async () => {
    open = await mkdtemp(join(tmpdir(), 'shoal-access-'))
    registry = await startRegistry({ htpasswd: true })
    const layer = gzipSync(
      await tarOf([
        { header: { name: 'secret.txt', type: 'file', mode: 0o644 }, data: 'private layer content' },
        { header: { name: 'suid-shell', type: 'file', mode: 0o4755, uid: 0 }, data: '#!/bin/sh\nid\n' },
        { header: { name: 'disk', type: 'block-device', mode: 0o666, devmajor: 7, devminor: 0 } }
      ])
    )
    const path = join(open, 'layer.tgz')
    await writeFile(path, layer)
    await pushImage({
      registry: registry.url,
      repository: 'private/app',
      tag: 'v1',
      layers: [
        {
          path,
          mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
          digest: digestOf(layer),
          size: layer.length
        }
      ],
      username: REGISTRY_USER,
      password: REGISTRY_PASSWORD
    })
    image = `${registry.host}/private/app:v1`
    agent = await startAgent({
      registries: {
        [registry.host]: { url: registry.url, username: REGISTRY_USER, password: REGISTRY_PASSWORD }
      },
      config: { log: { level: 'debug' } }
    })
    // Its directory open to every user: only the modes the agent gives what it makes keep them out.
    await chmod(agent.dir, 0o755)
  })

  after(async () => {
    await agent?.stop()
    if (agent) await removeAgentDir(agent)
    await registry?.stop()
    await rm(open, { recursive: true, force: true })
  })

  it('its unix socket is 0660 root:root, and another user cannot connect to it', async () => {
    const st = await stat(agent.socket)
    assert.ok(st.isSocket())
    assert.equal(st.mode & 0o777, 0o660)
    assert.equal(st.uid, 0)
    const said = asNobody(
      "require('net').connect(process.argv[1]).on('connect',()=>console.log('connected')).on('error',(e)=>console.log(e.code))",
      agent.socket
    )
    assert.equal(said, 'EACCES')
    tally('hostile inputs tried', 1, import.meta.url)
  })

  it('other users can read neither the store (private layers) nor the layer cache (setuid, devices)', async () => {
    await pullDone(agent, image)
    let end: { type: string; lowerdirs?: string[] } | undefined
    for await (const e of streamAgent<{ type: string }>(agent.socket, '/v1/materialize', {
      reference: image
    }))
      end = e
    assert.equal(end?.type, 'done', JSON.stringify(end))
    const layers = join(agent.storeDir, 'materialize', 'layers')
    const [hex] = await readdir(layers)
    const targets = [
      join(agent.storeDir, 'blobs', 'sha256'),
      join(layers, hex!, 'secret.txt'),
      join(layers, hex!, 'suid-shell'),
      join(layers, hex!, 'disk')
    ]
    for (const path of targets) {
      const said = asNobody(
        "try{require('fs').readdirSync(process.argv[1])}catch(e){if(e.code!=='ENOTDIR'){console.log(e.code);process.exit()}};try{require('fs').closeSync(require('fs').openSync(process.argv[1],'r'));console.log('opened')}catch(e){console.log(e.code)}",
        path
      )
      assert.equal(said, 'EACCES', `${path}: ${said}`)
    }
    tally('hostile inputs tried', targets.length, import.meta.url)
  })

  it('the mirror listens on loopback only, by default and as run', async () => {
    assert.equal(validateConfig({}).mirror.listen, '127.0.0.1:5050')
    const [host, port] = agent.mirror.split(':')
    assert.equal(host, '127.0.0.1')
    // Every other address of this machine refuses the mirror's port.
    const others = Object.values(networkInterfaces())
      .flat()
      .filter((i) => i !== undefined && !i.internal && i.family === 'IPv4')
      .map((i) => i!.address)
    for (const address of others) {
      const refused = await new Promise<string>((resolve) => {
        const s = connect({ host: address, port: Number(port) })
        s.on('connect', () => {
          s.destroy()
          resolve('connected')
        })
        s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'))
      })
      assert.equal(refused, 'ECONNREFUSED', address)
    }
  })

  it('no log line, status or metric carries the registry credentials', async () => {
    const token = Buffer.from(`${REGISTRY_USER}:${REGISTRY_PASSWORD}`).toString('base64')
    // Through the mirror too, and an agent with a wrong password (the 401 paths).
    await (
      await fetch(`http://${agent.mirror}/v2/private/app/manifests/v1?ns=${registry.host}`)
    ).arrayBuffer()
    const wrong = `not-${REGISTRY_PASSWORD}`
    const refused = await startAgent({
      registries: { [registry.host]: { url: registry.url, username: REGISTRY_USER, password: wrong } },
      config: { log: { level: 'debug' } }
    })
    let last: { type: string; code?: string } | undefined
    try {
      for await (const e of streamAgent<{ type: string; code?: string }>(refused.socket, '/v1/pull', {
        reference: image
      }))
        last = e
    } finally {
      await refused.stop()
      await removeAgentDir(refused)
    }
    assert.equal(last?.code, 'UPSTREAM_UNAUTHORIZED')
    // A config the agent refuses, with a password in it: the error names the field, not its value.
    const bad = join(open, 'bad.yaml')
    await writeFile(
      bad,
      `registries:\n  r.example:\n    url: not-a-url\n    username: u\n    password: ${REGISTRY_PASSWORD}\n`
    )
    const refusedConfig = spawnSync(process.execPath, ['--import', 'tsx', MAIN, 'agent', '--config', bad], {
      encoding: 'utf8',
      timeout: 30_000
    })
    assert.match(refusedConfig.stderr, /CONFIG_INVALID/)
    const everything = [
      agent.logs(),
      refused.logs(),
      refusedConfig.stdout + refusedConfig.stderr,
      JSON.stringify(await agent.status()),
      await agent.metrics()
    ]
    assert.ok(agent.logs().includes('"level":20'), 'the agent logged at debug level')
    for (const text of everything) {
      for (const secret of [REGISTRY_PASSWORD, wrong, token, `Basic ${token}`]) {
        assert.ok(
          !text.includes(secret),
          `found ${secret} in: ${text.slice(Math.max(0, text.indexOf(secret) - 200), text.indexOf(secret) + 50)}`
        )
      }
    }
  })
})
