import { type ChildProcess, spawn } from 'node:child_process'
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { stringify } from 'yaml'
import { digestOf } from '../content/digest.ts'
import { writeDemoImage } from '../demo/seed-image.ts'
import { ConfigInvalidError, InternalError } from '../errors.ts'
import { parseReference } from '../oci/reference.ts'
import { generateSwarmKey } from '../p2p/swarm-key.ts'
import { formatBytes } from './format.ts'
import { pullCommand } from './pull-command.ts'
import { callAgent } from './socket-client.ts'
import { statusCommand } from './status-command.ts'

export interface DemoOptions {
  registry?: string
  image?: string
  dir: string
  /** Agents in the local swarm (default 3). */
  nodes?: number
}

const DEMO_REGISTRY = 'demo.shoal.local'
const MAIN = fileURLToPath(new URL('./main.ts', import.meta.url))

interface DemoAgent {
  name: string
  socket: string
  child: ChildProcess
  exited: Promise<number | null>
  status: Record<string, unknown>
}

/**
 * `shoal demo`: writes the embedded seed image (an OCI layout the project generates) or uses
 * the given registry, starts a small swarm of agents on loopback, and pulls the image on each:
 * the first from the seed, the second from its peers through the socket API with live
 * progress, the last through its registry mirror as containerd would. It ends by saying where
 * every byte came from on every node.
 */
export async function demoCommand(o: DemoOptions): Promise<void> {
  const out = process.stdout
  const nodes = Math.max(1, Math.min(o.nodes ?? 3, 8))
  const dir = resolve(o.dir)
  await mkdir(dir, { recursive: true })
  let reference: string
  const registries: Record<string, { url?: string; layout?: string }> = {}
  if (o.registry) {
    if (!o.image)
      throw new ConfigInvalidError('--registry needs --image <ref> naming an image in that registry')
    reference = o.image
    registries[parseReference(o.image).registry] = { url: o.registry }
  } else {
    const seed = join(dir, 'seed')
    const fresh = !(await stat(join(seed, 'index.json')).catch(() => undefined))
    if (fresh) out.write(`writing the demo seed image (an OCI layout) to ${seed} ...\n`)
    const img = await writeDemoImage(seed)
    registries[DEMO_REGISTRY] = { layout: seed }
    reference = `${DEMO_REGISTRY}/shoal/demo:${img.tag}`
    out.write(
      `seed: ${img.layers.length} layers, ${formatBytes(img.layers.reduce((n, l) => n + l.size, 0))}, manifest ${img.manifestDigest}\n`
    )
  }

  // Socket paths must stay under 108 bytes: keep them in a short temporary directory.
  const run = await mkdtemp(join(tmpdir(), 'shoal-demo-'))
  const keyFile = join(run, 'swarm.key')
  await writeFile(keyFile, generateSwarmKey(), { mode: 0o600 })
  const agents: DemoAgent[] = []
  try {
    for (let i = 1; i <= nodes; i++) {
      const bootstrap = (agents[0]?.status.swarm as { addresses?: string[] } | undefined)?.addresses ?? []
      const agent = await startDemoAgent(`node-${i}`, join(dir, `node-${i}`), run, {
        registries,
        swarm: { enabled: true, listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap, keyFile }
      })
      agents.push(agent)
      out.write(`${agent.name} up: socket ${agent.socket}, mirror ${String(agent.status.mirror)}\n`)
    }
    const [first, ...rest] = agents as [DemoAgent, ...DemoAgent[]]
    out.write(`\n${first.name}: shoal pull ${reference} (nobody has it yet: from the seed)\n`)
    await pullCommand(reference, { socket: first.socket })
    await waitForAnnouncements(first)
    for (const [i, agent] of rest.entries()) {
      if (i < rest.length - 1 || rest.length === 1) {
        out.write(`\n${agent.name}: shoal pull ${reference} (from its peers)\n`)
        await pullCommand(reference, { socket: agent.socket })
      } else {
        out.write(`\n${agent.name}: the same image through its registry mirror, as containerd fetches it\n`)
        const served = await pullThroughMirror(String(agent.status.mirror), reference)
        out.write(`   ${served.blobs} blobs, ${formatBytes(served.bytes)}, each checked against its digest\n`)
      }
    }
    out.write('\nwhere every byte came from:\n')
    for (const agent of agents) {
      out.write(`\n[${agent.name}]\n`)
      await statusCommand(agent.socket, false, out)
    }
  } finally {
    for (const a of agents) a.child.kill('SIGTERM')
    await Promise.all(agents.map((a) => a.exited))
    await rm(run, { recursive: true, force: true })
  }
}

async function startDemoAgent(
  name: string,
  storeDir: string,
  run: string,
  config: Record<string, unknown>
): Promise<DemoAgent> {
  const socket = join(run, `${name}.sock`)
  await rm(storeDir, { recursive: true, force: true })
  const configFile = join(run, `${name}.yaml`)
  await writeFile(
    configFile,
    stringify({
      storeDir,
      socket: { path: socket },
      mirror: { listen: '127.0.0.1:0' },
      log: { level: 'warn' },
      ...config
    })
  )
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, 'agent', '--config', configFile], {
    stdio: ['ignore', 'inherit', 'inherit']
  })
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)))
  let dead = false
  exited.then(() => {
    dead = true
  })
  for (let i = 0; i < 300 && !dead; i++) {
    try {
      const status = await callAgent<Record<string, unknown>>(socket, 'GET', '/v1/status')
      return { name, socket, child, exited, status }
    } catch {
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  child.kill('SIGKILL')
  throw new InternalError(`${name} did not start (see its log above)`)
}

/** The first pull announces its blobs in the DHT in the background; give it a moment. */
async function waitForAnnouncements(agent: DemoAgent): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const s = await callAgent<{ swarm?: { announced?: number }; store: { completeBlobs: number } }>(
      agent.socket,
      'GET',
      '/v1/status'
    )
    // Every complete blob but the manifest is announced once fetched.
    if ((s.swarm?.announced ?? 0) >= s.store.completeBlobs - 1) return
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** Fetches manifest and blobs through the mirror like a runtime, verifying every digest. */
async function pullThroughMirror(
  mirror: string,
  reference: string
): Promise<{ blobs: number; bytes: number }> {
  const ref = parseReference(reference)
  const base = `http://${mirror}/v2/${ref.repository}`
  const ns = `?ns=${encodeURIComponent(ref.registry)}`
  const accept = [
    'application/vnd.oci.image.manifest.v1+json',
    'application/vnd.docker.distribution.manifest.v2+json',
    'application/vnd.oci.image.index.v1+json'
  ].join(', ')
  const mres = await fetch(`${base}/manifests/${ref.digest ?? ref.tag ?? 'latest'}${ns}`, {
    headers: { accept }
  })
  if (!mres.ok) throw new InternalError(`mirror answered ${mres.status} for the manifest`)
  const manifest = (await mres.json()) as { config: { digest: string }; layers: { digest: string }[] }
  let bytes = 0
  const blobs = [manifest.config, ...manifest.layers]
  for (const b of blobs) {
    const res = await fetch(`${base}/blobs/${b.digest}${ns}`)
    const body = new Uint8Array(await res.arrayBuffer())
    if (!res.ok || digestOf(body) !== b.digest)
      throw new InternalError(`mirror served a bad blob ${b.digest}`)
    bytes += body.length
  }
  return { blobs: blobs.length, bytes }
}
