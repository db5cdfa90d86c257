import type { ServerResponse } from 'node:http'
import { sendJson } from './http.ts'

/**
 * Whether the agent can do its work: its store is open and, in a swarm, its DHT knows at least
 * one peer (or none is expected: no bootstrap, DNS or mDNS discovery configured), and it is
 * not draining. `/readyz` answers 200 with it when `ready`, 503 otherwise.
 */
export interface Readiness {
  ready: boolean
  /** `open`, or `closed` (starting or stopping). */
  store: 'open' | 'closed'
  /**
   * `ok`: peers in the routing table; `standalone`: none, and none configured to find;
   * `disabled`: no swarm; `no-peers`: peers to find and none found yet (not ready).
   */
  dht: 'ok' | 'standalone' | 'disabled' | 'no-peers'
  /** Peers in the DHT's routing table. */
  routingTable: number
  /** Stopping, or drained by `shoal drain`: peers are sent elsewhere. */
  draining: boolean
}

/**
 * Answers `GET`/`HEAD` `/healthz` (liveness: 200 while the process answers at all) and
 * `/readyz` (readiness, see `Readiness`). Returns false for any other path.
 */
export function healthRoute(
  res: ServerResponse,
  pathname: string,
  head: boolean,
  readiness: (() => Readiness) | undefined
): boolean {
  if (pathname === '/healthz') {
    sendJson(res, 200, { status: 'ok' }, head)
    return true
  }
  if (pathname === '/readyz' && readiness !== undefined) {
    const r = readiness()
    sendJson(res, r.ready ? 200 : 503, r, head)
    return true
  }
  return false
}
