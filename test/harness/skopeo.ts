import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { cleanDir, runCommand } from './containerd.ts'

const SKOPEO_BIN = process.env.SHOAL_SKOPEO_BIN ?? '/usr/bin/skopeo'
const PODMAN_BIN = process.env.SHOAL_PODMAN_BIN ?? '/usr/bin/podman'
const TIMEOUT_MS = 300_000

/** What a skopeo or podman invocation did. */
export interface ClientResult {
  code: number
  stdout: string
  stderr: string
  durationMs: number
}

/** Options of `skopeoCopyViaMirror` and `podmanPullViaMirror`. */
export interface ViaMirrorOptions {
  /** `registryHost/repo:tag` (or `@sha256:...`). */
  ref: string
  /** host:port of the mirror (the agent). */
  mirrorHost: string
  /** host:port of the registry the ref names. */
  registryHost: string
  timeoutMs?: number
  signal?: AbortSignal
}

/**
 * registries.conf (v2) sending pulls from `registryHost` to `mirrorHost` first, both plain HTTP.
 * containers/image sends no `?ns=`, and a mirror location cannot carry a `host:port` in its
 * path (it must be a valid reference): the agent under test serves `registryHost` as its
 * `mirror.defaultRegistry`. (A registry without a port can go in the path, as in deploy/podman.)
 * containers/image picks one source per image: once the mirror served the manifest, every blob
 * must come from it too.
 */
export function registriesConf(registryHost: string, mirrorHost: string): string {
  return `unqualified-search-registries = []

[[registry]]
location = ${JSON.stringify(registryHost)}
insecure = true

[[registry.mirror]]
location = ${JSON.stringify(mirrorHost)}
insecure = true
`
}

/**
 * `skopeo copy docker://<ref> dir:<destDir>` through the mirror. skopeo 1.9 ignores
 * `CONTAINERS_REGISTRIES_CONF`, so the file goes in `--registries-conf`; `--insecure-policy`
 * keeps /etc/containers/policy.json out of it. skopeo verifies every blob's digest as it
 * copies. A non-zero code is returned, not thrown.
 */
export async function skopeoCopyViaMirror(o: ViaMirrorOptions & { destDir: string }): Promise<ClientResult> {
  const dir = await mkdtemp('/tmp/sh-s-')
  try {
    const conf = join(dir, 'registries.conf')
    await writeFile(conf, registriesConf(o.registryHost, o.mirrorHost))
    return await runCommand(
      SKOPEO_BIN,
      [
        '--insecure-policy',
        '--registries-conf',
        conf,
        'copy',
        '--src-tls-verify=false',
        `docker://${o.ref}`,
        `dir:${o.destDir}`
      ],
      { timeoutMs: o.timeoutMs ?? TIMEOUT_MS, signal: o.signal }
    )
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** What podman stored: the image's manifest digest as podman reports it. */
export interface PodmanResult extends ClientResult {
  digest?: string
}

/**
 * `podman pull <ref>` through the mirror into a throw-away store (its own `--root` and
 * `--runroot`, overlay driver, no events, cgroupfs), then `podman images` for the digest; the
 * store is unmounted and removed afterwards. podman honours `CONTAINERS_REGISTRIES_CONF`.
 */
export async function podmanPullViaMirror(o: ViaMirrorOptions): Promise<PodmanResult> {
  const dir = await mkdtemp('/tmp/sh-p-')
  try {
    const conf = join(dir, 'registries.conf')
    await writeFile(conf, registriesConf(o.registryHost, o.mirrorHost))
    const policy = join(dir, 'policy.json')
    await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }))
    const env = { ...process.env, CONTAINERS_REGISTRIES_CONF: conf }
    const global = [
      '--root',
      join(dir, 'root'),
      '--runroot',
      join(dir, 'run'),
      '--storage-driver',
      'overlay',
      '--events-backend',
      'none',
      '--cgroup-manager',
      'cgroupfs'
    ]
    const timeoutMs = o.timeoutMs ?? TIMEOUT_MS
    const pulled = await runCommand(
      PODMAN_BIN,
      [...global, 'pull', '--tls-verify=false', '--signature-policy', policy, o.ref],
      { timeoutMs, signal: o.signal, env }
    )
    if (pulled.code !== 0) return pulled
    const listed = await runCommand(
      PODMAN_BIN,
      [...global, 'images', '--digests', '--format', '{{.Digest}}'],
      {
        timeoutMs: 60_000,
        env
      }
    )
    const digest = listed.stdout.split('\n').find((l) => l.startsWith('sha256:'))
    return { ...pulled, ...(digest && { digest: digest.trim() }) }
  } finally {
    await cleanDir(dir)
  }
}
