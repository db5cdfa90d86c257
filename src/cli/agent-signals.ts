import type { Logger } from 'pino'
import type { Agent } from '../agent.ts'
import type { ShoalConfig } from '../config/schema.ts'
import { second } from '../constants.ts'
import { toShoalError } from '../errors.ts'

/** How long closing may take after the drain before a stopping agent gives up and exits 1. */
const STOP_TIMEOUT_MS = 30 * second
/** Exit code of an agent a second signal cut short, or whose stop failed or hung. */
export const FORCED_EXIT = 1

export interface AgentSignalsInit {
  /** Loads the configuration again (file, environment, flags), as at start. */
  load: () => Promise<ShoalConfig>
  /** Settles once the agent's start did: a signal during the start waits for it. */
  started: Promise<unknown>
  /** Ends the process; `process.exit` by default. */
  exit?: (code: number) => void
}

/**
 * The agent's signals. SIGTERM and SIGINT drain (stop advertising, refuse new peers, let the
 * uploads in flight finish up to `shutdown.drainTimeout`), stop every component and exit 0; a
 * second one exits at once. SIGHUP reloads the configuration: its live keys apply at once, the
 * rest wait for a restart, and an invalid file is refused with a logged `CONFIG_INVALID` while
 * the agent runs on unchanged. Reloads run one at a time, in the order the signals came.
 */
export function handleAgentSignals(agent: Agent, logger: Logger, init: AgentSignalsInit): void {
  const log = logger.child({ component: 'agent' })
  const exit = (code: number) => {
    logger.flush()
    ;(init.exit ?? process.exit)(code)
  }
  let stopping = false
  const stop = async (signal: string) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting without waiting')
      exit(FORCED_EXIT)
      return
    }
    stopping = true
    const drainTimeoutMs = agent.config.shutdown.drainTimeout
    log.info({ signal, drainTimeoutMs }, 'stopping')
    const deadline = setTimeout(() => {
      log.error({ signal }, 'stop did not finish in time: exiting')
      exit(FORCED_EXIT)
    }, drainTimeoutMs + STOP_TIMEOUT_MS)
    deadline.unref()
    try {
      await init.started
      await agent.drain({ timeoutMs: drainTimeoutMs })
      await agent.stop()
    } catch (err) {
      const e = toShoalError(err)
      log.error({ code: e.code, err: e.message }, 'stop failed')
      exit(FORCED_EXIT)
      return
    }
    clearTimeout(deadline)
    exit(0)
  }
  let reloads = Promise.resolve()
  const reload = async () => {
    await init.started
    if (stopping) return
    let next: ShoalConfig
    try {
      next = await init.load()
    } catch (err) {
      const e = toShoalError(err)
      agent.metrics.configReloads.inc({ outcome: 'rejected' })
      log.error({ code: e.code, err: e.message }, 'configuration reload refused: the running one stays')
      return
    }
    const plan = await agent.reconfigure(next)
    agent.metrics.configReloads.inc({ outcome: 'applied' })
    log.info({ applied: plan.applied, restart: plan.restart }, 'configuration reloaded')
    if (plan.restart.length > 0) log.warn({ keys: plan.restart }, 'changed keys need a restart')
  }
  process.on('SIGINT', () => void stop('SIGINT'))
  process.on('SIGTERM', () => void stop('SIGTERM'))
  process.on('SIGHUP', () => {
    reloads = reloads.then(reload).catch((err: unknown) => {
      const e = toShoalError(err)
      log.error({ code: e.code, err: e.message }, 'configuration reload failed')
    })
  })
}
