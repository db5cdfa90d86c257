import type { ServerResponse } from 'node:http'
import type { BlobInfo, BlobStore } from '../interface/store.ts'
import { parseRange, sendBody } from './http.ts'
import type { ShoalMetrics } from './metrics.ts'

export interface BlobResponseInit {
  store: BlobStore
  metrics?: ShoalMetrics
  /** Label for `shoal_served_bytes_total`. */
  iface: 'mirror' | 'socket'
  head: boolean
  rangeHeader?: string
  /** Content-Type to send; registries send octet-stream for blobs. */
  contentType?: string
}

/**
 * Answers with a complete, verified blob from the store: Content-Length, Docker-Content-Digest,
 * Range as 206 with Content-Range, and never a Content-Encoding (clients hash what they get).
 * The blob is leased while it streams so eviction cannot pull it away.
 */
export async function sendStoredBlob(
  res: ServerResponse,
  info: BlobInfo,
  init: BlobResponseInit
): Promise<void> {
  const range = parseRange(init.rangeHeader, info.size)
  const headers: Record<string, string | number> = {
    'Content-Type': init.contentType ?? 'application/octet-stream',
    'Docker-Content-Digest': info.digest,
    'Accept-Ranges': 'bytes',
    ETag: `"${info.digest}"`
  }
  if (range) {
    headers['Content-Range'] = `bytes ${range.start}-${range.end - 1}/${info.size}`
    headers['Content-Length'] = range.end - range.start
  } else {
    headers['Content-Length'] = info.size
  }
  res.writeHead(range ? 206 : 200, headers)
  if (init.head) {
    res.end()
    return
  }
  const lease = init.store.acquire(info.digest)
  try {
    await init.store.touch(info.digest)
    await sendBody(res, init.store.stream(info.digest, range), (n) =>
      init.metrics?.bytesServed.inc({ interface: init.iface }, n)
    )
  } finally {
    lease.release()
  }
}
