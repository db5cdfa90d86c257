import { shortDigest } from './format.ts'
import { callAgent } from './socket-client.ts'

/** `shoal prune`: removes every materialized layer no one holds a reference on. */
export async function pruneCommand(options: {
  socket: string
  json?: boolean
  out?: NodeJS.WritableStream
}): Promise<string[]> {
  const out = options.out ?? process.stdout
  const { removed } = await callAgent<{ removed: string[] }>(options.socket, 'POST', '/v1/prune')
  if (options.json) out.write(`${JSON.stringify({ removed }, null, 2)}\n`)
  else {
    out.write(`removed ${removed.length} unused layer${removed.length === 1 ? '' : 's'}\n`)
    for (const d of removed) out.write(`  ${shortDigest(d)}\n`)
  }
  return removed
}
