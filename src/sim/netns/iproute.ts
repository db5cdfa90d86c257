/**
 * A typed wrapper over iproute2 (`ip netns`, `ip link`, `ip addr`, `tc`) for the protocol-level
 * simulator. Every command runs through the `CommandRunner` component with an argument array
 * (no shell); a failure becomes a typed error: `IPROUTE_MISSING` when the program is not
 * installed, `NETNS_PERMISSION` when the kernel refuses (not root), `NETNS_SETUP_FAILED` with
 * the command's stderr otherwise.
 */

import { IprouteMissingError, NetnsPermissionError, NetnsSetupError } from '../../errors.ts'
import type { AbortOptions } from '../../interface/common.ts'
import { type CommandRunner, execFileRunner } from '../../materialize/command-runner.ts'

/** Collaborators of `Iproute`. */
export interface IprouteComponents {
  runner: CommandRunner
}

/** Where iproute2's programs are; defaults are found on PATH. */
export interface IprouteInit {
  ip?: string
  tc?: string
}

const REFUSED = /Operation not permitted|Permission denied|EPERM|EACCES/

/** Builds and reads network namespaces, veth pairs, bridges and addresses. */
export class Iproute {
  readonly #c: IprouteComponents
  readonly #ip: string
  readonly #tc: string

  constructor(components: IprouteComponents = { runner: execFileRunner }, init: IprouteInit = {}) {
    this.#c = components
    this.#ip = init.ip ?? 'ip'
    this.#tc = init.tc ?? 'tc'
  }

  /** Runs `ip <args>` and returns its standard output. */
  ip(args: readonly string[], options: AbortOptions = {}): Promise<string> {
    return this.#run(this.#ip, args, options)
  }

  /** Runs `tc <args>` and returns its standard output. */
  tc(args: readonly string[], options: AbortOptions = {}): Promise<string> {
    return this.#run(this.#tc, args, options)
  }

  /** Fails with `IPROUTE_MISSING` unless both `ip` and `tc` run. */
  async check(options: AbortOptions = {}): Promise<void> {
    await this.ip(['-V'], options)
    await this.tc(['-V'], options)
  }

  /** Names of every network namespace on the machine (`ip netns list`). */
  async listNetns(options: AbortOptions = {}): Promise<string[]> {
    const out = await this.ip(['-j', 'netns', 'list'], options)
    if (out.trim() === '') return []
    return (JSON.parse(out) as { name: string }[]).map((n) => n.name)
  }

  async addNetns(name: string, options: AbortOptions = {}): Promise<void> {
    await this.ip(['netns', 'add', name], options)
    await this.setUp(name, 'lo', options)
  }

  async deleteNetns(name: string, options: AbortOptions = {}): Promise<void> {
    await this.ip(['netns', 'delete', name], options)
  }

  /** Ids of the processes running in namespace `name`. */
  async netnsPids(name: string, options: AbortOptions = {}): Promise<number[]> {
    const out = await this.ip(['netns', 'pids', name], options)
    return out
      .split('\n')
      .map((l) => Number(l.trim()))
      .filter((n) => Number.isInteger(n) && n > 0)
  }

  /** A veth pair with one end in each namespace, made there directly (never in the host's). */
  async addVeth(
    a: { name: string; ns: string },
    b: { name: string; ns: string },
    options: AbortOptions = {}
  ): Promise<void> {
    await this.ip(
      ['-n', a.ns, 'link', 'add', a.name, 'type', 'veth', 'peer', 'name', b.name, 'netns', b.ns],
      options
    )
  }

  async addBridge(ns: string, name: string, options: AbortOptions = {}): Promise<void> {
    await this.ip(['-n', ns, 'link', 'add', name, 'type', 'bridge'], options)
    await this.setUp(ns, name, options)
  }

  async setMaster(ns: string, dev: string, bridge: string, options: AbortOptions = {}): Promise<void> {
    await this.ip(['-n', ns, 'link', 'set', dev, 'master', bridge], options)
  }

  /** Adds `cidr` (`10.77.1.1/16`) to `dev` in `ns`. */
  async addAddress(ns: string, dev: string, cidr: string, options: AbortOptions = {}): Promise<void> {
    await this.ip(['-n', ns, 'addr', 'add', cidr, 'dev', dev], options)
  }

  async setUp(ns: string, dev: string, options: AbortOptions = {}): Promise<void> {
    await this.ip(['-n', ns, 'link', 'set', dev, 'up'], options)
  }

  /** Sets kernel parameters of namespace `ns` (`sysctl -w key=value` run inside it). */
  async sysctl(
    ns: string,
    values: Readonly<Record<string, string | number>>,
    options: AbortOptions = {}
  ): Promise<void> {
    const pairs = Object.entries(values).map(([k, v]) => `${k}=${v}`)
    if (pairs.length > 0) await this.ip(['netns', 'exec', ns, 'sysctl', '-q', '-w', ...pairs], options)
  }

  /** Names of the links in `ns` (or the host's namespace when `ns` is undefined). */
  async listLinks(ns: string | undefined, options: AbortOptions = {}): Promise<string[]> {
    const out = await this.ip([...(ns === undefined ? [] : ['-n', ns]), '-j', 'link', 'show'], options)
    if (out.trim() === '') return []
    return (JSON.parse(out) as { ifname: string }[]).map((l) => l.ifname)
  }

  async deleteLink(ns: string | undefined, dev: string, options: AbortOptions = {}): Promise<void> {
    await this.ip([...(ns === undefined ? [] : ['-n', ns]), 'link', 'delete', dev], options)
  }

  async #run(file: string, args: readonly string[], options: AbortOptions): Promise<string> {
    try {
      return (await this.#c.runner.run(file, args, options)).stdout
    } catch (err) {
      const cause = (err as { cause?: NodeJS.ErrnoException }).cause
      if (cause?.code === 'ENOENT') {
        throw new IprouteMissingError(`${file} is not installed (apt-get install iproute2)`, { cause: err })
      }
      const message = err instanceof Error ? err.message : String(err)
      const command = `${file} ${args.join(' ')}`
      if (REFUSED.test(message)) {
        throw new NetnsPermissionError(`${command}: refused; run as root (CAP_NET_ADMIN): ${message}`, {
          cause: err
        })
      }
      throw new NetnsSetupError(`${command}: ${message}`, { cause: err })
    }
  }
}
