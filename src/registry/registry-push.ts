import { createReadStream } from 'node:fs'
import { type Dispatcher, request } from 'undici'
import { digestOf } from '../content/digest.ts'
import { UpstreamProtocolError, UpstreamUnauthorizedError } from '../errors.ts'
import type { AbortOptions } from '../interface/common.ts'
import type { Descriptor } from '../oci/manifest.ts'
import { OCI_CONFIG, OCI_MANIFEST } from '../oci/media-types.ts'

/** One blob to push: a file on disk, its digest and size known. */
export interface PushBlob extends Descriptor {
  path: string
}

export interface PushImageInit {
  /** `http(s)://host[:port]` of the registry. */
  registry: string
  repository: string
  tag: string
  /** Bottom first. */
  layers: PushBlob[]
  /** The image config JSON; a minimal one naming the layers as its diff IDs when not given. */
  config?: Uint8Array
  /** A static bearer token, or basic credentials. */
  token?: string
  username?: string
  password?: string
  dispatcher?: Dispatcher
}

export interface PushedImage {
  manifestDigest: string
  manifest: Uint8Array
  /** Blobs the registry already had (not sent again). */
  skipped: string[]
}

/**
 * Pushes an image (config, layers, OCI manifest) with the distribution API: each blob not
 * already there is one monolithic upload (`POST .../blobs/uploads/`, then `PUT <location>
 * ?digest=`), streamed from its file; then `PUT .../manifests/<tag>`. Authenticates with a
 * static token or basic credentials; registries that want a token exchange are not handled here.
 */
export async function pushImage(init: PushImageInit, options: AbortOptions = {}): Promise<PushedImage> {
  const base = init.registry.replace(/\/+$/, '')
  const repo = `${base}/v2/${init.repository}`
  const headers: Record<string, string> = {}
  if (init.token) headers.authorization = `Bearer ${init.token}`
  else if (init.username !== undefined && init.password !== undefined) {
    headers.authorization = `Basic ${Buffer.from(`${init.username}:${init.password}`).toString('base64')}`
  }
  const call = async (
    method: Dispatcher.HttpMethod,
    url: string,
    extra: Partial<Dispatcher.RequestOptions> = {}
  ) => {
    const res = await request(url, {
      method,
      ...extra,
      headers: { ...headers, ...(extra.headers as Record<string, string> | undefined) },
      ...(init.dispatcher && { dispatcher: init.dispatcher }),
      ...(options.signal && { signal: options.signal })
    })
    const body = Buffer.from(await res.body.arrayBuffer())
    if (res.statusCode === 401 || res.statusCode === 403) {
      throw new UpstreamUnauthorizedError(`${method} ${url}: the registry answered ${res.statusCode}`)
    }
    return { status: res.statusCode, headers: res.headers, body }
  }
  const config =
    init.config ??
    new TextEncoder().encode(
      JSON.stringify({
        architecture: process.arch === 'x64' ? 'amd64' : process.arch,
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: init.layers.map((l) => l.digest) }
      })
    )
  const configDesc: Descriptor = { mediaType: OCI_CONFIG, digest: digestOf(config), size: config.byteLength }
  const skipped: string[] = []
  const upload = async (d: Descriptor, body: () => Uint8Array | NodeJS.ReadableStream) => {
    const head = await call('HEAD', `${repo}/blobs/${d.digest}`)
    if (head.status === 200) {
      skipped.push(d.digest)
      return
    }
    const start = await call('POST', `${repo}/blobs/uploads/`)
    const location = header(start.headers.location)
    if (start.status !== 202 || !location) {
      throw new UpstreamProtocolError(
        `starting an upload answered ${start.status}: ${start.body.toString().slice(0, 200)}`
      )
    }
    const url = new URL(location, `${base}/`)
    url.searchParams.set('digest', d.digest)
    const put = await call('PUT', url.toString(), {
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(d.size) },
      body: body() as Dispatcher.RequestOptions['body']
    })
    if (put.status !== 201) {
      throw new UpstreamProtocolError(
        `uploading ${d.digest} answered ${put.status}: ${put.body.toString().slice(0, 200)}`
      )
    }
  }
  await upload(configDesc, () => config)
  for (const layer of init.layers) await upload(layer, () => createReadStream(layer.path))
  const manifest = new TextEncoder().encode(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: configDesc,
      layers: init.layers.map(({ mediaType, digest, size }) => ({ mediaType, digest, size }))
    })
  )
  const put = await call('PUT', `${repo}/manifests/${init.tag}`, {
    headers: { 'content-type': OCI_MANIFEST },
    body: manifest
  })
  if (put.status !== 201) {
    throw new UpstreamProtocolError(
      `putting the manifest answered ${put.status}: ${put.body.toString().slice(0, 200)}`
    )
  }
  return { manifestDigest: digestOf(manifest), manifest, skipped }
}

function header(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v
}
