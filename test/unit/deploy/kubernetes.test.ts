import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, dirname, join, posix } from 'node:path'
import { before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import type { IContainer, IProbe, IVolume } from 'kubernetes-models/v1'
import { parse as parseToml } from 'smol-toml'
import { loadConfig } from '../../../src/config/load.ts'
import type { ShoalConfig } from '../../../src/config/schema.ts'
import {
  generatorFile,
  type Kustomization,
  type Manifest,
  manifestProblems,
  readKustomization,
  readManifests
} from './kube-schema.ts'

const KUBE = fileURLToPath(new URL('../../../deploy/kubernetes/', import.meta.url))
const CONTAINERD_HOSTS = fileURLToPath(new URL('../../../deploy/containerd/hosts.toml', import.meta.url))

/** Every kustomization under deploy/kubernetes, by folder relative to it. */
async function kustomizations(): Promise<Map<string, Kustomization>> {
  const out = new Map<string, Kustomization>()
  const walk = async (rel: string) => {
    const dir = join(KUBE, rel)
    if (await stat(join(dir, 'kustomization.yaml')).catch(() => undefined)) {
      out.set(rel, await readKustomization(dir))
    }
    for (const e of await readdir(dir, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(join(rel, e.name))
    }
  }
  await walk('')
  return out
}

/** The manifest files (resources that are files) of every kustomization, parsed. */
async function allManifests(ks: Map<string, Kustomization>): Promise<Manifest[]> {
  const out: Manifest[] = []
  for (const [rel, k] of ks) {
    for (const r of k.resources ?? []) {
      const path = join(KUBE, rel, r)
      if ((await stat(path)).isDirectory()) continue
      out.push(...(await readManifests(path, join(rel, r))))
    }
  }
  return out
}

// biome-ignore lint/suspicious/noExplicitAny: manifests are checked against their schema elsewhere
type Doc = any

function find(manifests: Manifest[], kind: string): Doc {
  const found = manifests.filter((m) => m.doc.kind === kind)
  assert.equal(found.length, 1, `one ${kind} expected, found ${found.length}`)
  return found[0]?.doc
}

let ks: Map<string, Kustomization>
let base: Kustomization
let manifests: Manifest[]
let daemonSet: Doc
let agentContainer: IContainer
let config: ShoalConfig

/** The ConfigMap name and file a generator of the base kustomization makes for `key`. */
function generated(key: string): { name: string; file: string } {
  for (const g of base.configMapGenerator ?? []) {
    for (const entry of g.files ?? []) {
      const f = generatorFile(entry)
      if (f.key === key) return { name: g.name, file: join(KUBE, f.file) }
    }
  }
  throw new Error(`no configMapGenerator makes a key ${key}`)
}

function volume(name: string): IVolume {
  const v = (daemonSet.spec.template.spec.volumes as IVolume[]).find((x) => x.name === name)
  assert.ok(v, `no volume ${name}`)
  return v
}

/** The volume mounted at the deepest mount path holding `path`, and the path inside it. */
function mountHolding(container: IContainer, path: string): { volume: IVolume; rest: string } {
  const mounts = (container.volumeMounts ?? [])
    .filter((m) => path === m.mountPath || path.startsWith(`${m.mountPath.replace(/\/$/, '')}/`))
    .sort((a, b) => b.mountPath.length - a.mountPath.length)
  const m = mounts[0]
  assert.ok(m, `${container.name} mounts nothing holding ${path}`)
  return { volume: volume(m.name), rest: posix.relative(m.mountPath, path) }
}

before(async () => {
  ks = await kustomizations()
  const b = ks.get('')
  assert.ok(b, 'deploy/kubernetes has no kustomization.yaml')
  base = b
  manifests = await allManifests(ks)
  daemonSet = find(manifests, 'DaemonSet')
  const c = (daemonSet.spec.template.spec.containers as IContainer[]).find((x) => x.name === 'agent')
  assert.ok(c, 'the DaemonSet has no container named agent')
  agentContainer = c
  config = await loadConfig({ file: generated('agent.yaml').file, env: {} })
})

describe('deploy/kubernetes manifests', () => {
  it('validate against the Kubernetes models', async () => {
    const kinds = manifests.map((m) => m.doc.kind).sort()
    assert.deepEqual(kinds, ['DaemonSet', 'Namespace', 'PodMonitor', 'Service'])
    assert.deepEqual(await manifestProblems(manifests), [])
  })

  it('the validator catches a misspelled key, a wrong type and a YAML 1.1 octal mistake', async () => {
    const ds = structuredClone(daemonSet)
    ds.spec.template.spec.containers[0].imagePullPolicyy = 'Always'
    const ds2 = structuredClone(daemonSet)
    ds2.spec.template.spec.hostNetwok = true
    const badType = structuredClone(daemonSet)
    badType.spec.template.spec.containers[0].ports[0].containerPort = 'four thousand'
    const pm = structuredClone(find(manifests, 'PodMonitor'))
    pm.spec.podMetricsEndpoints[0].pathh = '/metrics'
    const problems = await manifestProblems([
      { file: 'misspelled', doc: ds },
      { file: 'misspelled-2', doc: ds2 },
      { file: 'bad-type', doc: badType },
      { file: 'podmonitor', doc: pm }
    ])
    const has = (re: RegExp) =>
      assert.ok(
        problems.some((p) => re.test(p)),
        `${re} not in ${problems.join('\n')}`
      )
    has(/^misspelled: .*imagePullPolicyy/)
    has(/^misspelled-2: .*hostNetwok/)
    has(/^bad-type: .*containerPort must be integer/)
    has(/^podmonitor: .*pathh/)

    // Kubernetes reads YAML 1.1: `0o400` is a string there, not a file mode.
    const dir = await mkdtemp(join(tmpdir(), 'shoal-kube-'))
    const file = join(dir, 'cm.yaml')
    await writeFile(
      file,
      'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n---\n' +
        (await readFile(join(KUBE, 'daemonset.yaml'), 'utf8')).replace(
          /defaultMode: \d+/,
          'defaultMode: 0o400'
        )
    )
    const octal = await manifestProblems(await readManifests(file, 'octal'))
    assert.ok(
      octal.some((p) => /defaultMode/.test(p)),
      octal.join('\n')
    )
    await rm(dir, { recursive: true, force: true })
  })

  it('every file of every folder is listed by its kustomization, and every listed file exists', async () => {
    for (const [rel, k] of ks) {
      const listed = new Set<string>(['kustomization.yaml'])
      for (const r of [...(k.resources ?? []), ...(k.components ?? [])]) listed.add(r)
      for (const g of k.configMapGenerator ?? []) {
        for (const f of g.files ?? []) listed.add(generatorFile(f).file)
      }
      const dir = join(KUBE, rel)
      for (const name of listed) {
        assert.ok(
          await stat(join(dir, name)).catch(() => undefined),
          `${rel}/kustomization.yaml lists ${name}`
        )
      }
      for (const e of await readdir(dir, { withFileTypes: true })) {
        if (e.isDirectory()) continue
        assert.ok(listed.has(e.name), `${join(rel, e.name)} is in no kustomization`)
      }
    }
    assert.equal(ks.get('prometheus-operator')?.kind, 'Component')
    assert.equal(base.namespace, find(manifests, 'Namespace').metadata.name)
  })

  it('the ConfigMap config is valid for the agent, with the swarm on', () => {
    assert.equal(config.swarm.enabled, true)
    assert.equal(config.mirror.enabled, true)
    assert.match(config.mirror.listen, /^127\.0\.0\.1:/, 'the mirror must stay on the node')
    // The kubelet kills the pod after its grace period: the drain must fit in it.
    const grace = daemonSet.spec.template.spec.terminationGracePeriodSeconds * 1000
    assert.ok(grace > config.shutdown.drainTimeout, `grace ${grace} ms`)
  })

  it('the agent reads the generated config, and mounts its store and socket directories from the host', () => {
    const args = [...(agentContainer.command ?? []), ...(agentContainer.args ?? [])]
    const at = args.indexOf('--config')
    assert.ok(at >= 0, args.join(' '))
    const configPath = args[at + 1] as string
    const m = mountHolding(agentContainer, configPath)
    assert.equal(m.volume.configMap?.name, generated('agent.yaml').name)
    assert.equal(m.rest, 'agent.yaml')

    for (const dir of [config.storeDir, dirname(config.socket.path)]) {
      const held = mountHolding(agentContainer, dir)
      assert.equal(held.rest, '', `${dir} is a mount of its own`)
      // Runtimes on the node find the socket and the store where the config says.
      assert.equal(held.volume.hostPath?.path, dir)
    }
    // Materialized layers live under the store unless materialize.dir says otherwise.
    assert.equal(config.materialize.dir, undefined)
  })

  it('the swarm key comes from the Secret, and DNS discovery finds the headless service', () => {
    const key = mountHolding(agentContainer, config.swarm.keyFile as string)
    assert.ok(key.volume.secret?.secretName, 'the swarm key is not mounted from a Secret')
    assert.equal(key.rest, 'swarm.key')

    const svc = find(manifests, 'Service')
    assert.equal(svc.spec.clusterIP, 'None')
    assert.deepEqual(svc.spec.selector, daemonSet.spec.selector.matchLabels)
    const swarmPort = Number(/\/tcp\/(\d+)/.exec(config.swarm.listen[0] ?? '')?.[1])
    const containerPort = agentContainer.ports?.find((p) => p.name === 'swarm')?.containerPort
    assert.equal(containerPort, swarmPort)
    assert.equal(svc.spec.ports[0].port, swarmPort)
    assert.equal(svc.spec.ports[0].targetPort, 'swarm')
    assert.deepEqual(config.swarm.dnsDiscovery, {
      name: `${svc.metadata.name}.${base.namespace}.svc.cluster.local`,
      port: swarmPort,
      interval: 30_000
    })
    assert.equal(daemonSet.spec.template.spec.hostNetwork, true)
    assert.equal(daemonSet.spec.template.spec.dnsPolicy, 'ClusterFirstWithHostNet')
  })

  it('probes ask the mirror, on the address the config gives it', () => {
    const [host, port] = config.mirror.listen.split(':')
    const probes: [string, IProbe | undefined][] = [
      ['/healthz', agentContainer.startupProbe],
      ['/healthz', agentContainer.livenessProbe],
      ['/readyz', agentContainer.readinessProbe]
    ]
    for (const [path, probe] of probes) {
      assert.ok(probe?.httpGet, 'every probe of the agent is an HTTP GET')
      const get = probe.httpGet
      const p =
        typeof get.port === 'string'
          ? agentContainer.ports?.find((x) => x.name === get.port)?.containerPort
          : get.port
      assert.equal(get.host, host)
      assert.equal(p, Number(port))
      // test/integration/deploy/daemonset-agent.test.ts asks a real agent for these paths.
      assert.equal(get.path, path)
    }
    assert.ok(agentContainer.resources?.requests?.memory && agentContainer.resources.limits?.memory)
    assert.ok(agentContainer.resources?.requests?.cpu && agentContainer.resources.limits?.cpu)
  })

  it('the init container writes deploy/containerd/hosts.toml, and leaves a foreign file alone', async () => {
    const init = (daemonSet.spec.template.spec.initContainers as IContainer[]).find(
      (c) => c.name === 'containerd-hosts'
    )
    assert.ok(init?.command, 'no containerd-hosts init container')
    const env = Object.fromEntries((init.env ?? []).map((e) => [e.name, e.value as string]))
    // The paths it uses are its mounts: the host's certs.d and the generated ConfigMap.
    const certs = mountHolding(init, env.CERTS_D as string)
    assert.equal(certs.volume.hostPath?.path, '/etc/containerd/certs.d')
    assert.equal(certs.rest, '')
    const source = mountHolding(init, env.SOURCE as string)
    assert.equal(source.volume.configMap?.name, generated(source.rest).name)
    const shipped = await readFile(CONTAINERD_HOSTS, 'utf8')
    assert.equal(await readFile(generated(source.rest).file, 'utf8'), shipped)

    // Run its script as the container would, with the two paths pointing into a scratch tree.
    const dir = await mkdtemp(join(tmpdir(), 'shoal-init-'))
    const copy = join(dir, 'hosts.toml')
    await writeFile(copy, shipped)
    const [cmd, ...args] = init.command
    const run = () =>
      spawnSync(cmd as string, [...args, ...(init.args ?? [])], {
        env: { PATH: process.env.PATH, CERTS_D: join(dir, 'certs.d'), SOURCE: copy },
        encoding: 'utf8'
      })
    const target = join(dir, 'certs.d', '_default', 'hosts.toml')
    let r = run()
    assert.equal(r.status, 0, r.stderr)
    assert.equal(await readFile(target, 'utf8'), shipped)
    // Its own older file is replaced; a file of the node's owner is not.
    await writeFile(target, `${shipped.split('\n')[0]}\n[host."http://127.0.0.1:1"]\n`)
    r = run()
    assert.equal(await readFile(target, 'utf8'), shipped)
    await writeFile(target, 'server = "https://mine.example"\n')
    r = run()
    assert.equal(r.status, 0, r.stderr)
    assert.equal(await readFile(target, 'utf8'), 'server = "https://mine.example"\n')
    assert.deepEqual(await readdir(join(dir, 'certs.d', '_default')), [basename(target)])
    await rm(dir, { recursive: true, force: true })

    // And the entry points containerd at the mirror the agent listens on.
    const toml = JSON.parse(JSON.stringify(parseToml(shipped))) as {
      host: Record<string, { capabilities: string[] }>
    }
    assert.deepEqual(Object.keys(toml.host), [`http://${config.mirror.listen}`])
    assert.deepEqual(toml.host[`http://${config.mirror.listen}`]?.capabilities, ['pull', 'resolve'])
  })

  it('metrics leave the node through the proxy only, on the port the scrapers are told', async () => {
    const pod = daemonSet.spec.template
    const proxy = (pod.spec.containers as IContainer[]).find((c) => c.name === 'metrics-proxy')
    assert.ok(proxy)
    const metricsPort = proxy.ports?.find((p) => p.name === 'metrics')?.containerPort
    assert.equal(pod.metadata.annotations['prometheus.io/port'], String(metricsPort))
    assert.equal(pod.metadata.annotations['prometheus.io/path'], '/metrics')
    const pm = find(manifests, 'PodMonitor')
    assert.equal(pm.spec.podMetricsEndpoints[0].port, 'metrics')
    assert.deepEqual(pm.spec.selector.matchLabels, daemonSet.spec.selector.matchLabels)
    assert.equal(pm.metadata.namespace, base.namespace)

    const args = proxy.command ?? []
    const conf = mountHolding(proxy, args[args.indexOf('-c') + 1] as string)
    const nginx = await readFile(generated(conf.rest).file, 'utf8')
    assert.equal(conf.volume.configMap?.name, generated(conf.rest).name)
    assert.match(nginx, new RegExp(`^\\s*listen ${metricsPort};`, 'm'))
    assert.deepEqual(
      [...nginx.matchAll(/proxy_pass (\S+);/g)].map((m) => m[1]),
      [`http://${config.mirror.listen}/metrics`]
    )
  })
})
