import { Agent } from '../agent.ts'
import { loadConfig } from '../config/load.ts'
import type { ShoalConfig } from '../config/schema.ts'
import { ConfigInvalidError } from '../errors.ts'
import { createLogger } from '../logging.ts'
import { handleAgentSignals } from './agent-signals.ts'

export interface AgentFlags {
  config?: string
  storeDir?: string
  socket?: string
  mirrorListen?: string
  quota?: string
  pieceSize?: string
  logLevel?: string
  registry?: string[]
  layout?: string[]
}

/**
 * `shoal agent`: validates the configuration, starts the agent, drains and stops it on
 * SIGINT/SIGTERM, reloads the configuration on SIGHUP (see `handleAgentSignals`).
 */
export async function agentCommand(flags: AgentFlags): Promise<void> {
  const load = () => loadAgentConfig(flags)
  const config = await load()
  const logger = createLogger({ level: config.log.level })
  const agent = new Agent({ logger }, config)
  // A promise nobody awaited failed: a bug worth a loud log line, not a reason to drop every
  // runtime's pulls. Thrown exceptions still end the process: its state is unknown after one.
  process.on('unhandledRejection', (err) => {
    logger.error(
      { err: err instanceof Error ? err.message : String(err), stack: (err as Error)?.stack },
      'unhandled rejection'
    )
  })
  // Signals are handled from the start: a stop or reload during it waits for it to finish.
  const started = agent.start()
  handleAgentSignals(agent, logger, { load, started: started.catch(() => undefined) })
  await started
}

/** The configuration from the file, `SHOAL_*` and the flags (they win), as at start and on reload. */
async function loadAgentConfig(flags: AgentFlags): Promise<ShoalConfig> {
  const registries: Record<string, { url?: string; layout?: string }> = {}
  for (const r of flags.registry ?? []) {
    const [host, url] = splitPair(r, '--registry')
    registries[host] = { url }
  }
  for (const l of flags.layout ?? []) {
    const [host, dir] = splitPair(l, '--layout')
    registries[host] = { layout: dir }
  }
  const config = await loadConfig({
    file: flags.config ?? process.env.SHOAL_CONFIG,
    overrides: {
      storeDir: flags.storeDir,
      'socket.path': flags.socket,
      'mirror.listen': flags.mirrorListen,
      'store.quota': flags.quota,
      'store.pieceSize': flags.pieceSize,
      'log.level': flags.logLevel
    }
  })
  // Flags add registries to those of the file rather than replacing the whole map.
  Object.assign(config.registries, registries)
  return config
}

function splitPair(s: string, flag: string): [string, string] {
  const i = s.indexOf('=')
  if (i <= 0 || i === s.length - 1) {
    throw new ConfigInvalidError(`${flag} takes host=value, got "${s}"`)
  }
  return [s.slice(0, i), s.slice(i + 1)]
}
