import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { spawnDaemon } from './daemon.ts'

const execFileP = promisify(execFile)

/** The daemon and its client (Debian's `containerd` package, 1.6). */
const CONTAINERD_BIN = process.env.SHOAL_CONTAINERD_BIN ?? '/usr/bin/containerd'
const CTR_BIN = process.env.SHOAL_CTR_BIN ?? '/usr/bin/ctr'
/** The namespace every harness call uses. */
export const CONTAINERD_NAMESPACE = 'shoal'
const READY_TIMEOUT_MS = 15_000
const PULL_TIMEOUT_MS = 300_000
/** Nothing listens on port 1: `fallback: false` points `server` there so a failed mirror fails the pull. */
const DEAD_SERVER = 'http://127.0.0.1:1'

/** What a `ctr` invocation did. */
export interface CtrResult {
  code: number
  stdout: string
  stderr: string
  durationMs: number
}

/** Options of `TestContainerd.pull`. */
export interface PullOptions {
  /** host:port of a registry mirror (the agent); without it ctr pulls from the registry. */
  mirrorHost?: string
  /**
   * When false, `server` in hosts.toml is a closed port instead of the registry, so whatever the
   * mirror cannot serve fails the pull instead of coming from the registry. Default true.
   */
  fallback?: boolean
  /** `os/arch[/variant]` to pull from an index; ctr's default is this machine's. */
  platform?: string
  /** Pull every platform of an index. */
  allPlatforms?: boolean
  /** Default 300 s; the process is killed then (containerd has no timeout of its own). */
  timeoutMs?: number
  signal?: AbortSignal
}

/** A private containerd on a unix socket of its own, driven with `ctr`. */
export interface TestContainerd {
  pid: number
  /** The temporary directory holding config, root, state, socket and hosts dir. */
  dir: string
  socket: string
  /** The `--hosts-dir` given to ctr: `<hostsDir>/<registry host>/hosts.toml`. */
  hostsDir: string
  /**
   * `ctr images pull` of `ref` (`host:port/repo:tag`): writes the hosts.toml for the ref's
   * registry (the registry as `server` over plain HTTP, the mirror as a pull+resolve host) and
   * pulls, unpacking with overlayfs. A non-zero code is returned, not thrown.
   */
  pull(ref: string, options?: PullOptions): Promise<CtrResult>
  /** Digests of every blob in the content store (namespace `shoal`). */
  contentDigests(): Promise<string[]>
  /** Image names in namespace `shoal`. */
  images(): Promise<string[]>
  /** `ctr run --rm` of a pulled image with `cmd` (needs runc). */
  run(ref: string, cmd: string[], options?: { timeoutMs?: number }): Promise<CtrResult>
  /** Removes every image, then every blob left: the next pull fetches everything again. */
  removeAll(): Promise<void>
  /** Any `ctr` command against this daemon, e.g. `['content', 'ls']`. */
  ctr(args: string[], options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<CtrResult>
  /** containerd's own log so far, for failure messages. */
  logs(): string
  /** Kills the daemon, unmounts what it left mounted and removes the directory. */
  stop(): Promise<void>
}

/** Options of `startContainerd`. */
export interface StartContainerdInit {
  /** Default `overlayfs`; `native` needs no mounts. */
  snapshotter?: 'overlayfs' | 'native'
}

/**
 * Starts a real containerd with a config of its own: root, state and sockets under a short
 * temporary directory (unix socket paths must stay under 108 bytes), CRI and the snapshotters
 * this machine lacks disabled, nothing written outside the directory.
 */
export async function startContainerd(init: StartContainerdInit = {}): Promise<TestContainerd> {
  const snapshotter = init.snapshotter ?? 'overlayfs'
  const dir = await mkdtemp('/tmp/sh-c-')
  const socket = join(dir, 'c.sock')
  const hostsDir = join(dir, 'hosts')
  await mkdir(hostsDir)
  const configPath = join(dir, 'config.toml')
  await writeFile(configPath, containerdConfig(dir, socket))

  const daemon = spawnDaemon(CONTAINERD_BIN, ['--config', configPath])
  const { child } = daemon
  const logs = daemon.logs

  const ctr = (args: string[], o: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<CtrResult> =>
    runCommand(CTR_BIN, ['--address', socket, '-n', CONTAINERD_NAMESPACE, ...args], o)
  const lines = async (args: string[]): Promise<string[]> => {
    const r = await ctr(args, { timeoutMs: 60_000 })
    if (r.code !== 0) throw new Error(`ctr ${args.join(' ')} failed (${r.code}): ${r.stderr}`)
    return r.stdout
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean)
  }

  try {
    await waitReady(ctr, child, logs)
  } catch (err) {
    await daemon.kill()
    await cleanDir(dir)
    throw err
  }

  return {
    pid: child.pid ?? 0,
    dir,
    socket,
    hostsDir,
    pull: async (ref, o = {}) => {
      const registry = ref.split('/')[0] ?? ''
      await mkdir(join(hostsDir, registry), { recursive: true })
      await writeFile(join(hostsDir, registry, 'hosts.toml'), hostsToml(registry, o))
      const args = ['images', 'pull', '--hosts-dir', hostsDir, '--snapshotter', snapshotter]
      if (o.allPlatforms) args.push('--all-platforms')
      else if (o.platform) args.push('--platform', o.platform)
      return ctr([...args, ref], { timeoutMs: o.timeoutMs ?? PULL_TIMEOUT_MS, signal: o.signal })
    },
    contentDigests: () => lines(['content', 'ls', '--quiet']),
    images: () => lines(['images', 'ls', '--quiet']),
    run: async (ref, cmd, o = {}) => {
      const id = `t-${process.pid}-${Math.floor(performance.now())}`
      return ctr(['run', '--rm', '--snapshotter', snapshotter, ref, id, ...cmd], {
        timeoutMs: o.timeoutMs ?? 60_000
      })
    },
    removeAll: async () => {
      const images = await lines(['images', 'ls', '--quiet'])
      if (images.length > 0) await lines(['images', 'rm', '--sync', ...images])
      // Blobs of a failed pull belong to no image: remove them too, or the next pull skips them.
      const left = await lines(['content', 'ls', '--quiet'])
      if (left.length > 0) await lines(['content', 'rm', ...left])
    },
    ctr,
    logs,
    stop: async () => {
      await daemon.kill()
      await cleanDir(dir)
    }
  }
}

function containerdConfig(dir: string, socket: string): string {
  const q = (s: string): string => JSON.stringify(s)
  return `version = 2
root = ${q(join(dir, 'root'))}
state = ${q(join(dir, 'state'))}
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"
]

[grpc]
  address = ${q(socket)}

[ttrpc]
  address = ${q(`${socket}.ttrpc`)}

[debug]
  level = "info"

# Otherwise it creates /opt/containerd.
[plugins."io.containerd.internal.v1.opt"]
  path = ${q(join(dir, 'opt'))}
`
}

/**
 * hosts.toml for one registry. containerd asks the `[host]` entries first, in order, then
 * `server`; it adds `?ns=<registry>` to requests to the mirror only. A file with `server` alone
 * is logged as "invalid `host` tree", so a direct pull names the registry as a host as well.
 */
export function hostsToml(registryHost: string, o: Pick<PullOptions, 'mirrorHost' | 'fallback'>): string {
  const server = o.fallback === false && o.mirrorHost ? DEAD_SERVER : `http://${registryHost}`
  const host = o.mirrorHost ? `http://${o.mirrorHost}` : server
  return `server = ${JSON.stringify(server)}

[host.${JSON.stringify(host)}]
  capabilities = ["pull", "resolve"]
`
}

async function waitReady(
  ctr: (args: string[], o?: { timeoutMs?: number }) => Promise<CtrResult>,
  child: ChildProcess,
  logs: () => string
): Promise<void> {
  const deadline = performance.now() + READY_TIMEOUT_MS
  while (performance.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`containerd exited (${child.exitCode ?? child.signalCode}) at start:\n${logs()}`)
    }
    const r = await ctr(['version'], { timeoutMs: 2000 })
    if (r.code === 0) return
    await sleep(50)
  }
  throw new Error(`containerd did not answer within ${READY_TIMEOUT_MS} ms:\n${logs()}`)
}

/** Runs a command to completion, never throwing for a non-zero exit; killed at the timeout. */
export function runCommand(
  bin: string,
  args: string[],
  o: { timeoutMs?: number; signal?: AbortSignal; env?: NodeJS.ProcessEnv } = {}
): Promise<CtrResult> {
  const started = performance.now()
  return new Promise((resolve) => {
    const signals = [AbortSignal.timeout(o.timeoutMs ?? PULL_TIMEOUT_MS), ...(o.signal ? [o.signal] : [])]
    const child = spawn(bin, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      signal: AbortSignal.any(signals),
      killSignal: 'SIGKILL',
      ...(o.env && { env: o.env })
    })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (c: Buffer) => out.push(c))
    child.stderr.on('data', (c: Buffer) => err.push(c))
    let failure = ''
    child.on('error', (e) => {
      failure = `${e.message}\n`
    })
    child.on('close', (code, signal) => {
      resolve({
        code: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: failure + Buffer.concat(err).toString('utf8'),
        durationMs: performance.now() - started
      })
    })
  })
}

/** Unmounts everything mounted at or below `dir` (deepest first), then removes it. */
export async function cleanDir(dir: string): Promise<void> {
  await unmountUnder(dir)
  await rm(dir, { recursive: true, force: true })
}

/** Lazily unmounts every mount point at or below `dir`, deepest first. */
export async function unmountUnder(dir: string): Promise<void> {
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '')
  const points = info
    .split('\n')
    .map((l) => (l.split(' ')[4] ?? '').replace(/\\040/g, ' '))
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length)
  for (const p of points) {
    await execFileP('umount', ['-l', p]).catch(() => undefined)
  }
}
