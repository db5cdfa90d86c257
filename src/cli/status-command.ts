import { formatBytes, shortDigest } from './format.ts'
import { callAgent } from './socket-client.ts'

interface Status {
  version: string
  pid: number
  socket: string
  mirror: string | null
  storeDir: string
  uptimeMs: number
  store: { usedBytes: number; quotaBytes: number; blobs: number; completeBlobs: number }
  transfers: { digest: string; size: number; bytesHeld: number; piecesHeld: number; pieceCount: number }[]
  bytes: { fetched: Record<string, number>; served: Record<string, number> }
  materializer?: string
  materializations?: {
    reference?: string
    layer?: string
    refs: number
    materialization: { layers: unknown[] }
  }[]
  swarm?: {
    peerId?: string
    addresses?: string[]
    peers?: number
    announced?: number
    served?: { bytesServed?: number }
  } | null
}

/** `shoal status`: the agent at a glance (or its JSON with `--json`). */
export async function statusCommand(socket: string, json: boolean, out = process.stdout): Promise<void> {
  const s = await callAgent<Status>(socket, 'GET', '/v1/status')
  if (json) {
    out.write(`${JSON.stringify(s, null, 2)}\n`)
    return
  }
  const pct = s.store.quotaBytes > 0 ? ((100 * s.store.usedBytes) / s.store.quotaBytes).toFixed(1) : '0'
  const lines = [
    `shoal ${s.version} (pid ${s.pid}), up ${(s.uptimeMs / 1000).toFixed(0)} s`,
    `  socket   ${s.socket}`,
    `  mirror   ${s.mirror ?? 'disabled'}`,
    `  store    ${s.storeDir}: ${formatBytes(s.store.usedBytes)} of ${formatBytes(s.store.quotaBytes)} (${pct} %), ${s.store.completeBlobs} complete / ${s.store.blobs} blobs`,
    `  fetched  ${fmtMap(s.bytes.fetched)}`,
    `  served   ${fmtMap({ ...s.bytes.served, ...(s.swarm?.served?.bytesServed ? { peers: s.swarm.served.bytesServed } : {}) })}`,
    `  transfers ${s.transfers.length}`
  ]
  if (s.swarm?.peerId) {
    lines.splice(
      3,
      0,
      `  swarm    ${s.swarm.peerId}, ${s.swarm.peers ?? 0} peers, ${s.swarm.announced ?? 0} blobs announced`
    )
  }
  for (const t of s.transfers) {
    lines.push(
      `    ${shortDigest(t.digest)} ${formatBytes(t.bytesHeld)} / ${formatBytes(t.size)} (${t.piecesHeld}/${t.pieceCount} pieces)`
    )
  }
  const held = s.materializations ?? []
  if (s.materializer) lines.push(`  materialized ${held.length} (${s.materializer})`)
  for (const h of held) {
    lines.push(
      `    ${h.reference ?? shortDigest(h.layer ?? '')}: ${h.materialization.layers.length} layers, ${h.refs} refs`
    )
  }
  out.write(`${lines.join('\n')}\n`)
}

function fmtMap(m: Record<string, number>): string {
  const parts = Object.entries(m).map(([k, v]) => `${k} ${formatBytes(v)}`)
  return parts.length > 0 ? parts.join(', ') : 'nothing yet'
}
