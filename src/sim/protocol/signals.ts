/**
 * SIGINT and SIGTERM as an abort signal, for the programs that run a protocol-level
 * simulation: the first signal aborts the run, which then removes its namespaces and processes
 * before the program exits; a second one exits at once.
 */

/** An abort signal the first SIGINT or SIGTERM fires, and a function that stops listening. */
export function abortOnSignals(): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController()
  const onSignal = (name: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(130)
    process.stderr.write(`\n${name}: stopping the simulation and removing what it made ...\n`)
    controller.abort(new Error(`interrupted by ${name}`))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  return {
    signal: controller.signal,
    dispose: () => {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    }
  }
}
