import type { Readiness } from '../api/health.ts'
import type { Pin } from '../fetch/image-pins.ts'
import type { UploadStatus } from '../p2p/piece-exchange.ts'
import { formatBytes, shortDigest } from './format.ts'
import { callAgent } from './socket-client.ts'

/** What `GET /v1/status` answers (the fields this command shows). */
export interface Status {
  version: string
  pid: number
  socket: string
  mirror: string | null
  storeDir: string
  uptimeMs: number
  draining?: boolean
  ready?: Readiness
  store: { usedBytes: number; quotaBytes: number; blobs: number; completeBlobs: number }
  transfers: { digest: string; size: number; bytesHeld: number; piecesHeld: number; pieceCount: number }[]
  bytes: { fetched: Record<string, number>; served: Record<string, number> }
  pins?: Pin[]
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
    peerList?: { peerId: string; address: string }[]
    routingTable?: number
    announced?: number
    uploads?: UploadStatus[]
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
  out.write(`${formatStatus(s).join('\n')}\n`)
}

/** The human view: one line per subject, then one indented line per item under it. */
export function formatStatus(s: Status): string[] {
  const pct = s.store.quotaBytes > 0 ? ((100 * s.store.usedBytes) / s.store.quotaBytes).toFixed(1) : '0'
  const pins = s.pins ?? []
  const pinnedBytes = pins.reduce((n, p) => n + p.bytes, 0)
  const lines = [
    `shoal ${s.version} (pid ${s.pid}), up ${(s.uptimeMs / 1000).toFixed(0)} s, ${readiness(s)}`,
    `  socket     ${s.socket}`,
    `  mirror     ${s.mirror ?? 'disabled'}`,
    `  store      ${s.storeDir}: ${formatBytes(s.store.usedBytes)} of ${formatBytes(s.store.quotaBytes)} (${pct} %), ${s.store.completeBlobs} complete / ${s.store.blobs} blobs`
  ]
  const sw = s.swarm
  if (sw?.peerId) {
    lines.push(
      `  swarm      ${sw.peerId}: ${sw.peers ?? 0} peers, ${sw.routingTable ?? 0} in the DHT, ${sw.announced ?? 0} blobs announced`
    )
    for (const p of sw.peerList ?? []) lines.push(`    peer     ${p.peerId}  ${p.address}`)
  }
  lines.push(`  fetched    ${fmtMap(s.bytes.fetched)}`)
  // `peer` is among the interfaces: bytes uploaded to peers are counted with the rest.
  lines.push(`  served     ${fmtMap(s.bytes.served)}`)
  lines.push(`  fetching   ${s.transfers.length}`)
  for (const t of s.transfers) {
    lines.push(
      `    ${shortDigest(t.digest)} ${formatBytes(t.bytesHeld)} / ${formatBytes(t.size)} (${t.piecesHeld}/${t.pieceCount} pieces)`
    )
  }
  if (sw?.peerId) {
    const uploads = sw.uploads ?? []
    lines.push(`  uploading  ${uploads.length}`)
    for (const u of uploads) {
      lines.push(
        `    ${shortDigest(u.digest) || '(hello)'} to ${u.peerId}: ${u.piecesServed} pieces, ${formatBytes(u.bytesServed)}`
      )
    }
  }
  lines.push(`  pinned     ${pins.length} (${formatBytes(pinnedBytes)})`)
  for (const p of pins) lines.push(`    ${p.name}: ${p.digests.length} blobs, ${formatBytes(p.bytes)}`)
  const held = s.materializations ?? []
  if (s.materializer) lines.push(`  materialized ${held.length} (${s.materializer})`)
  for (const h of held) {
    lines.push(
      `    ${h.reference ?? shortDigest(h.layer ?? '')}: ${h.materialization.layers.length} layers, ${h.refs} refs`
    )
  }
  return lines
}

function readiness(s: Status): string {
  if (s.draining) return 'draining'
  const r = s.ready
  if (r === undefined) return 'readiness unknown'
  if (r.ready) return 'ready'
  return `not ready (store ${r.store}, dht ${r.dht})`
}

function fmtMap(m: Record<string, number>): string {
  const parts = Object.entries(m).map(([k, v]) => `${k} ${formatBytes(v)}`)
  return parts.length > 0 ? parts.join(', ') : 'nothing yet'
}
