import { Command } from 'commander'
import { VERSION } from '../agent.ts'
import { BadRequestError, ShoalError } from '../errors.ts'
import { agentCommand } from './agent-command.ts'
import { drainCommand } from './drain-command.ts'
import { gcCommand } from './gc-command.ts'
import { materializeCommand } from './materialize-command.ts'
import { pinCommand } from './pin-command.ts'
import { pruneCommand } from './prune-command.ts'
import { pullCommand } from './pull-command.ts'
import { releaseCommand } from './release-command.ts'
import { statusCommand } from './status-command.ts'

const DEFAULT_SOCKET = process.env.SHOAL_SOCKET ?? '/run/shoal/shoal.sock'
const collect = (v: string, prev: string[] = []) => [...prev, v]

const program = new Command()
  .name('shoal')
  .description('Peer-to-peer container layer distribution: every byte verified, no central service')
  .version(VERSION)

program
  .command('agent')
  .description('run the node agent (socket API, registry mirror, store)')
  .option('-c, --config <file>', 'YAML config file (env SHOAL_CONFIG)')
  .option('--store-dir <dir>', 'store root (env SHOAL_STORE_DIR)')
  .option('--socket <path>', 'unix socket of the runtime API (env SHOAL_SOCKET)')
  .option('--mirror-listen <host:port>', 'registry mirror address (env SHOAL_MIRROR_LISTEN)')
  .option('--quota <size>', 'store disk quota, e.g. 20GiB (env SHOAL_STORE_QUOTA)')
  .option('--piece-size <size>', 'piece size, e.g. 4MiB (env SHOAL_PIECE_SIZE)')
  .option('--log-level <level>', 'trace, debug, info, warn, error (env SHOAL_LOG_LEVEL)')
  .option('--registry <host=url>', 'upstream URL for a registry host (repeatable)', collect)
  .option(
    '--layout <host=dir>',
    'serve a registry host from an OCI image layout directory (repeatable)',
    collect
  )
  .action(agentCommand)

program
  .command('pull')
  .description('pull an image through the running agent, with live progress per layer')
  .argument('<reference>', 'image reference, e.g. docker.io/library/busybox:latest')
  .option('--socket <path>', 'agent socket', DEFAULT_SOCKET)
  .option('--platform <os/arch>', 'platform to pick from an index')
  .option('--no-progress', 'plain lines instead of bars')
  .action(async (reference: string, o: { socket: string; platform?: string; progress: boolean }) => {
    await pullCommand(reference, {
      socket: o.socket,
      platform: o.platform,
      tty: o.progress ? undefined : false
    })
  })

program
  .command('materialize')
  .description('pull an image through the agent and lay it out for mounting; prints the mount spec')
  .argument('<target>', 'image reference, or sha256:<hex> of one layer')
  .option('--socket <path>', 'agent socket', DEFAULT_SOCKET)
  .option('--platform <os/arch>', 'platform to pick from an index')
  .option('--ref <registry/repository>', 'where to fetch a layer the store does not hold')
  .option('--json', 'print only the result, as JSON')
  .action(async (target: string, o: { socket: string; platform?: string; ref?: string; json?: boolean }) => {
    await materializeCommand(target, o)
  })

program
  .command('release')
  .description('give back what one materialize of an image or layer took (layers stay until prune)')
  .argument('<target>', 'image reference, or sha256:<hex> of one layer, as given to materialize')
  .option('--socket <path>', 'agent socket', DEFAULT_SOCKET)
  .option('--json', 'print JSON')
  .action(async (target: string, o: { socket: string; json?: boolean }) => {
    await releaseCommand(target, o)
  })

program
  .command('prune')
  .description('remove every materialized layer no one holds')
  .option('--socket <path>', 'agent socket', DEFAULT_SOCKET)
  .option('--json', 'print JSON')
  .action(async (o: { socket: string; json?: boolean }) => {
    await pruneCommand(o)
  })

program
  .command('status')
  .description('show the agent: readiness, peers, transfers and uploads, store use, pins, bytes by source')
  .option('--socket <path>', 'agent socket', DEFAULT_SOCKET)
  .option('--json', 'print JSON')
  .action(async (o: { socket: string; json?: boolean }) => statusCommand(o.socket, Boolean(o.json)))

program
  .command('gc')
  .description('evict blobs neither pinned nor in use, least recently used first; prints what it freed')
  .option('--target <size>', 'stop once the store uses at most this, e.g. 10GiB (default: evict all it can)')
  .option('--socket <path>', 'agent socket', DEFAULT_SOCKET)
  .option('--json', 'print JSON')
  .action(async (o: { socket: string; target?: string; json?: boolean }) => {
    await gcCommand(o)
  })

program
  .command('pin')
  .description('pin an image (pulled first) or a held blob: the quota never evicts it; survives restarts')
  .argument('<target>', 'image reference, or sha256:<hex> of a blob (a manifest pins what it names)')
  .option('--socket <path>', 'agent socket', DEFAULT_SOCKET)
  .option('--json', 'print JSON')
  .action(async (target: string, o: { socket: string; json?: boolean }) => {
    await pinCommand('pin', target, o)
  })

program
  .command('unpin')
  .description('drop a pin (blobs another pin holds stay pinned)')
  .argument('<target>', 'the image reference or digest as pinned')
  .option('--socket <path>', 'agent socket', DEFAULT_SOCKET)
  .option('--json', 'print JSON')
  .action(async (target: string, o: { socket: string; json?: boolean }) => {
    await pinCommand('unpin', target, o)
  })

program
  .command('drain')
  .description(
    'stop advertising, send new peers elsewhere, wait for uploads in flight; the agent keeps running'
  )
  .option('--timeout <duration>', 'longest wait for uploads, e.g. 30s (default shutdown.drainTimeout)')
  .option('--socket <path>', 'agent socket', DEFAULT_SOCKET)
  .option('--json', 'print JSON')
  .action(async (o: { socket: string; timeout?: string; json?: boolean }) => {
    await drainCommand(o)
  })

const hyperlayer = program
  .command('hyperlayer')
  .description('block-level layers: the changed blocks between two LVM thin volumes (docs/hyperlayer.md)')

hyperlayer
  .command('diff')
  .description('write the blocks that differ between two read-only thin volumes as a hyperlayer')
  .argument('<parent-lv>', 'vg/lv of the parent volume, or - for none (a root hyperlayer)')
  .argument('<child-lv>', 'vg/lv of the child volume (same pool and size)')
  .requiredOption('-o, --output <file>', 'where to write the hyperlayer')
  .option('--method <method>', 'auto (thin_delta, else compare), thin_delta or compare', 'auto')
  .option('--json', 'print the result as JSON')
  .action(async (parent: string, child: string, o: { output: string; method: string; json?: boolean }) => {
    if (!['auto', 'thin_delta', 'compare'].includes(o.method)) {
      throw new BadRequestError(`--method must be auto, thin_delta or compare, not ${o.method}`)
    }
    const { hyperlayerDiffCommand } = await import('./hyperlayer-command.ts')
    await hyperlayerDiffCommand(parent, child, { ...o, method: o.method as 'auto' })
  })

hyperlayer
  .command('push')
  .description('push an image whose top layer is this hyperlayer to a registry')
  .argument('<file>', 'the hyperlayer (from hyperlayer diff)')
  .argument('<ref>', 'where to push, e.g. registry.example.com/app:v2')
  .option('--below <file>', 'a layer under it, bottom first (repeatable)', collect)
  .option('--plain-http', 'HTTP instead of HTTPS (the default for localhost)')
  .option('--json', 'print the result as JSON')
  .action(async (file: string, ref: string, o: { below?: string[]; plainHttp?: boolean; json?: boolean }) => {
    const { hyperlayerPushCommand } = await import('./hyperlayer-command.ts')
    await hyperlayerPushCommand(file, ref, o)
  })

program
  .command('simulate')
  .description('run swarm scenarios on the model simulator: goal tables, a JSON result and plots each')
  .argument('<scenario...>', 'scenario files (see simulations/scenarios)')
  .option('--out <dir>', 'where results and plots go', 'simulations/results')
  .action(async (paths: string[], o: { out: string }) => {
    const { simulateCommand } = await import('./simulate-command.ts')
    await simulateCommand(paths, o)
  })

program
  .command('demo')
  .description('run a local demo: agents on loopback pull a real image from an embedded seed')
  .option('--registry <url>', 'use this seed registry instead of the embedded OCI layout')
  .option('--image <ref>', 'image to pull (with --registry)')
  .option('--dir <dir>', 'working directory for the demo', '.shoal/demo')
  .option('--nodes <n>', 'agents in the local swarm', (v) => Number.parseInt(v, 10), 3)
  .action(async (o: { registry?: string; image?: string; dir: string; nodes: number }) => {
    await import('../polyfill.ts')
    const { demoCommand } = await import('./demo-command.ts')
    await demoCommand(o)
  })

program
  .command('swarm-key')
  .description('write a new pre-shared swarm key to a file (mode 0600); every node of a swarm needs the same')
  .argument('<file>', 'where to write it; an existing file is kept')
  .action(async (file: string) => {
    await import('../polyfill.ts')
    const { loadOrCreateSwarmKey } = await import('../p2p/swarm-key.ts')
    await loadOrCreateSwarmKey(file)
    process.stdout.write(`swarm key in ${file}\n`)
  })

try {
  await program.parseAsync(process.argv)
} catch (err) {
  const code =
    err instanceof ShoalError || (err as { code?: string }).code ? (err as { code: string }).code : 'INTERNAL'
  process.stderr.write(`shoal: ${code}: ${(err as Error).message}\n`)
  process.exit(code === 'CONFIG_INVALID' ? 2 : 1)
}
