import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import type { IContainer, IProbe } from 'kubernetes-models/v1'
import { parse as parseYaml } from 'yaml'
import { generateSwarmKey } from '../../../src/p2p/swarm-key.ts'
import { removeAgentDir, startAgent, type TestAgent, until } from '../../harness/agent.ts'
import { readManifests } from '../../unit/deploy/kube-schema.ts'

const KUBE = fileURLToPath(new URL('../../../deploy/kubernetes/', import.meta.url))

async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address() as { port: number }
  await new Promise((r) => server.close(r))
  return port
}

// The DaemonSet's agent with the DaemonSet's config (paths and ports moved to scratch ones on
// loopback, and a peer to find through bootstrap where the cluster would give DNS), asked what
// the kubelet and Prometheus would ask: its probes, and /metrics through the metrics-proxy
// container's nginx configuration run by a real nginx.
describe('the DaemonSet against a real agent', () => {
  let dir: string
  let peer: TestAgent
  let agent: TestAgent
  let containers: IContainer[]
  let nginx: ChildProcess | undefined

  before(async () => {
    const [ds] = await readManifests(join(KUBE, 'daemonset.yaml'))
    assert.ok(ds, 'daemonset.yaml is empty')
    const doc = ds.doc as { spec: { template: { spec: { containers: IContainer[] } } } }
    containers = doc.spec.template.spec.containers
    dir = await mkdtemp(join(tmpdir(), 'shoal-ds-'))
    const keyFile = join(dir, 'swarm.key')
    await writeFile(keyFile, generateSwarmKey(), { mode: 0o600 })
    const swarm = { enabled: true, listen: ['/ip4/127.0.0.1/tcp/0'], keyFile }
    peer = await startAgent({ registries: {}, config: { swarm } })
    const bootstrap = (await peer.status()).swarm?.addresses ?? []
    const config = parseYaml(await readFile(join(KUBE, 'agent.yaml'), 'utf8'))
    // The harness gives the store, the socket and the mirror port. Cluster DNS is not here:
    // the other node comes from bootstrap instead, so the agent still has peers to find.
    delete config.storeDir
    delete config.socket
    delete config.swarm.dnsDiscovery
    config.swarm = { ...config.swarm, ...swarm, bootstrap }
    agent = await startAgent({ registries: {}, config })
  })

  after(async () => {
    if (nginx?.pid !== undefined && nginx.exitCode === null) {
      const exited = new Promise((r) => nginx?.once('exit', r))
      nginx.kill('SIGTERM')
      await exited
    }
    for (const a of [agent, peer]) {
      await a?.stop()
      if (a) await removeAgentDir(a)
    }
    await rm(dir, { recursive: true, force: true })
  })

  it('answers every probe of the agent container with 200 once it has found its peer', async () => {
    const agentContainer = containers.find((c) => c.name === 'agent')
    const probes = [
      agentContainer?.startupProbe,
      agentContainer?.livenessProbe,
      agentContainer?.readinessProbe
    ]
    assert.equal((await agent.status()).swarm !== null, true, 'the swarm is on, as in the DaemonSet')
    // The mirror's port stands in for the named port `mirror` (the harness picks a free one).
    const ask = (probe: IProbe | undefined) => fetch(`http://${agent.mirror}${probe?.httpGet?.path}`)
    // Readiness waits for a peer in the DHT; the peer is there, so it comes.
    await until('the agent is ready', async () => (await ask(agentContainer?.readinessProbe)).status === 200)
    for (const probe of probes) {
      const res = await ask(probe)
      assert.equal(res.status, 200, `${probe?.httpGet?.path}: ${await res.text()}`)
    }
  })

  it('the metrics proxy passes /metrics on and nothing else', async () => {
    const proxy = containers.find((c) => c.name === 'metrics-proxy')
    const args = proxy?.command ?? []
    const port = await freePort()
    let conf = await readFile(join(KUBE, 'metrics-proxy.nginx.conf'), 'utf8')
    for (const [from, to] of [
      ['127.0.0.1:5050', agent.mirror],
      ['listen 9464;', `listen 127.0.0.1:${port};`],
      ['/tmp/', `${dir}/`]
    ] as const) {
      assert.ok(conf.includes(from), `nginx.conf has no ${from}`)
      conf = conf.replaceAll(from, to)
    }
    const confFile = join(dir, 'nginx.conf')
    await writeFile(confFile, conf)
    // The container's own command line, with the file moved and Debian's log path kept off.
    const argv = args.slice(1).map((a, i, all) => (all[i - 1] === '-c' ? confFile : a))
    nginx = spawn(args[0] as string, ['-p', dir, '-e', 'stderr', ...argv], {
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let output = ''
    nginx.stderr?.on('data', (d) => {
      output += d
    })
    const base = `http://127.0.0.1:${port}`
    await until('nginx answers', async () => {
      assert.equal(nginx?.exitCode, null, `nginx exited: ${output}`)
      return fetch(`${base}/metrics`).then(
        () => true,
        () => false
      )
    })
    const metrics = await fetch(`${base}/metrics`)
    assert.equal(metrics.status, 200)
    assert.match(await metrics.text(), /^# HELP shoal_fetched_bytes_total /m)
    for (const path of ['/v2/', '/v2/library/busybox/manifests/latest', '/metrics/x', '/']) {
      const res = await fetch(`${base}${path}`)
      assert.equal(res.status, 404, path)
      await res.arrayBuffer()
    }
    const post = await fetch(`${base}/metrics`, { method: 'POST' })
    assert.equal(post.status, 403)
  })
})
