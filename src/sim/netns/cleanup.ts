/**
 * Removing what protocol-level runs made: one run's namespaces (which takes their veth ends and
 * bridge with them), the processes still inside them, its scratch directory; and, on request,
 * everything earlier runs left behind when they were killed before they could clean up.
 */
import { readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Iproute } from './iproute.ts'
import { prefixOf, RUN_PREFIX, runNames } from './names.ts'

const OWNER_FILE = 'owner.pid'
/** Pids of processes a run started in the host's namespace, one a line (the push registry). */
const PIDS_FILE = 'host.pids'

/** Records that this process owns the run whose scratch directory is `dir`. */
export async function claimRun(dir: string): Promise<void> {
  await writeFile(join(dir, OWNER_FILE), `${process.pid}\n`)
}

/** Records a process the run started outside its namespaces, for a later stale cleanup. */
export async function recordHostPid(dir: string, pid: number): Promise<void> {
  await writeFile(join(dir, PIDS_FILE), `${pid}\n`, { flag: 'a' })
}

/** What a removal found and removed. */
export interface Removed {
  namespaces: string[]
  links: string[]
  pids: number[]
}

/**
 * Removes the run with `prefix`: kills what still runs in its namespaces (they were all started
 * by the run), deletes the namespaces and any link of its prefix in the host's namespace, and
 * its scratch directory unless `keepDir`.
 */
export async function removeRun(iproute: Iproute, prefix: string, keepDir = false): Promise<Removed> {
  const names = runNames(prefix)
  const removed: Removed = { namespaces: [], links: [], pids: [] }
  const namespaces = (await iproute.listNetns()).filter((n) => n.startsWith(prefix))
  // Hub last: node and registry namespaces first, so their links go with them.
  namespaces.sort((a, b) => Number(a === names.hub) - Number(b === names.hub))
  for (const ns of namespaces) {
    const pids = await iproute.netnsPids(ns).catch(() => [])
    for (const pid of pids) kill(pid, 'SIGKILL')
    removed.pids.push(...pids)
  }
  if (removed.pids.length > 0) await waitGone(removed.pids, 5000)
  for (const ns of namespaces) {
    await iproute.deleteNetns(ns)
    removed.namespaces.push(ns)
  }
  for (const link of await iproute.listLinks(undefined)) {
    if (link.startsWith(prefix)) {
      await iproute.deleteLink(undefined, link).catch(() => undefined)
      removed.links.push(link)
    }
  }
  for (const pid of await hostPids(names.dir)) {
    kill(pid, 'SIGKILL')
    removed.pids.push(pid)
  }
  if (!keepDir) await rm(names.dir, { recursive: true, force: true })
  return removed
}

/**
 * Removes every run whose owner is no longer alive (all runs but `except` with `all`): the
 * namespaces and host links named `shl<4 hex>-...` that such runs left, and their processes.
 */
export async function removeStaleRuns(
  iproute: Iproute,
  options: { all?: boolean; except?: string } = {}
): Promise<Removed> {
  const prefixes = new Set<string>()
  for (const n of [...(await iproute.listNetns()), ...(await iproute.listLinks(undefined))]) {
    const p = prefixOf(n)
    if (p !== undefined) prefixes.add(p)
  }
  const total: Removed = { namespaces: [], links: [], pids: [] }
  for (const prefix of prefixes) {
    if (prefix === options.except) continue
    if (!options.all && (await ownerAlive(runNames(prefix).dir))) continue
    const r = await removeRun(iproute, prefix)
    total.namespaces.push(...r.namespaces)
    total.links.push(...r.links)
    total.pids.push(...r.pids)
  }
  return total
}

/** Namespaces and host links of `prefix` that still exist. */
export async function leftovers(iproute: Iproute, prefix: string): Promise<string[]> {
  const names = [...(await iproute.listNetns()), ...(await iproute.listLinks(undefined))]
  return names.filter((n) => n.startsWith(prefix) && RUN_PREFIX.test(n))
}

async function ownerAlive(dir: string): Promise<boolean> {
  const text = await readFile(join(dir, OWNER_FILE), 'utf8').catch(() => '')
  const pid = Number(text.trim())
  return Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)
}

/** Host pids the run recorded that still run the run's own command line (not a reused pid). */
async function hostPids(dir: string): Promise<number[]> {
  const text = await readFile(join(dir, PIDS_FILE), 'utf8').catch(() => '')
  const out: number[] = []
  for (const line of text.split('\n')) {
    const pid = Number(line.trim())
    if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) continue
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
    if (cmdline.includes(dir)) out.push(pid)
  }
  return out
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function kill(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal)
  } catch {
    // Already gone.
  }
}

async function waitGone(pids: number[], ms: number): Promise<void> {
  const end = performance.now() + ms
  while (pids.some(alive) && performance.now() < end) await sleep(50)
}
