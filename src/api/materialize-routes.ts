import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import { parseDigest } from '../content/digest.ts'
import {
  AbortedError,
  BadRequestError,
  BlobUnknownError,
  NotMaterializedError,
  toShoalError
} from '../errors.ts'
import type { BlobFetcher, BlobRequest } from '../fetch/blob-fetcher.ts'
import type { ImagePuller, PullEvent } from '../fetch/image-puller.ts'
import type { ManifestResolver } from '../fetch/manifests.ts'
import type { Materialization, Materializer } from '../interface/materializer.ts'
import type { BlobStore } from '../interface/store.ts'
import { type Platform, parsePlatform } from '../oci/platform.ts'
import { formatReference, parseReference } from '../oci/reference.ts'
import { readBody, requestSignal, sendJson } from './http.ts'

export interface MaterializeRoutesComponents {
  materializer: Materializer
  puller: ImagePuller
  fetcher: BlobFetcher
  store: BlobStore
  manifests: ManifestResolver
  logger: Logger
}

/** One image (or layer) the agent holds materialized, as `/v1/status` lists it. */
export interface HeldMaterialization {
  /** The image, fully qualified (`registry/repository:tag`), when an image was materialized. */
  reference?: string
  /** The layer digest, when a single layer was materialized. */
  layer?: string
  /** The manifest the image's layers came from. */
  manifestDigest?: string
  /** Materializations of it not yet released. */
  refs: number
  materialization: Materialization
}

type PullDone = Extract<PullEvent, { type: 'done' }>

/**
 * Events of `POST /v1/materialize`, sent as NDJSON: the pull's own events (its `done` renamed
 * `pulled`), one `layer` per layer ready, then `done` with the mount, or `error` with a code.
 */
export type MaterializeEvent =
  | Exclude<PullEvent, PullDone>
  | (Omit<PullDone, 'type'> & { type: 'pulled' })
  | { type: 'layer'; digest: string; done: number; total: number }
  | ({ type: 'done' } & HeldMaterialization)
  | { type: 'error'; code: string; message: string }

/** What a request names: an image by reference, or one layer by digest. */
type Target =
  | { kind: 'image'; key: string; reference: string; canonical: string; platform?: Platform }
  | { kind: 'layer'; key: string; digest: string; ref?: string }

/**
 * `POST /v1/materialize`, `POST /v1/release` and `POST /v1/prune` of the socket API. An image is
 * pulled first (every layer complete and verified in the store), then laid out by the
 * materializer. Each materialize takes one reference per layer and each release gives one
 * back; the agent remembers which layers each image (or layer) holds, so a release gives back
 * exactly what its materialize took even if the tag has moved since.
 *
 * Layers are removed only by an explicit prune, never on release: a container restarted or an
 * image updated a minute later reuses its layers instead of extracting them again, and the
 * runtime decides when disk matters more (prune also clears layers no one took since a restart).
 */
export class MaterializeRoutes {
  readonly #c: MaterializeRoutesComponents
  readonly #log: Logger
  /** Held materializations by key (`image:<reference>`, `layer:<digest>`), oldest first. */
  readonly #held = new Map<string, HeldMaterialization[]>()

  constructor(components: MaterializeRoutesComponents) {
    this.#c = components
    this.#log = components.logger.child({ component: 'materialize-api' })
  }

  /** Every materialization held, for `/v1/status`. */
  list(): HeldMaterialization[] {
    return [...this.#held.values()].flat().map((h) => ({ ...h }))
  }

  /** `POST /v1/materialize {reference, platform?} | {layer, ref?}`: NDJSON progress, then `done`. */
  async materialize(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const target = parseTarget(await readJson(req, 'materialize'), 'materialize')
    // Refused before the stream starts, with its status: a layer no one can bring in.
    const source = target.kind === 'layer' ? await this.#layerSource(target) : undefined
    const signal = requestSignal(req, res)
    res.writeHead(200, { 'Content-Type': 'application/x-ndjson', 'Cache-Control': 'no-store' })
    const send = (e: MaterializeEvent) => {
      if (!res.writableEnded) res.write(`${JSON.stringify(e)}\n`)
    }
    try {
      let layers: string[]
      const mediaTypes: Record<string, string> = {}
      let manifestDigest: string | undefined
      if (target.kind === 'image') {
        const pulled = await this.#c.puller.pull(target.reference, {
          platform: target.platform,
          signal,
          onEvent: (e) => send(e.type === 'done' ? { ...e, type: 'pulled' } : e)
        })
        layers = pulled.layers.map((l) => l.digest)
        for (const l of pulled.layers) mediaTypes[l.digest] = l.mediaType
        manifestDigest = pulled.manifestDigest
      } else {
        if (source) {
          await this.#c.fetcher.fetch(source, {
            signal,
            onProgress: (p) =>
              send({ type: 'progress', digest: p.digest, bytesHeld: p.bytesHeld, size: p.size })
          })
        }
        layers = [target.digest]
      }
      const materialization = await this.#c.materializer.materialize(layers, {
        signal,
        mediaTypes,
        onProgress: (p) => send({ type: 'layer', ...p })
      })
      if (signal.aborted) {
        // The client went away before hearing of it: nobody will release it.
        await this.#c.materializer.release(layers)
        throw new AbortedError('the client went away')
      }
      const held = this.#take(target, manifestDigest, materialization)
      send({ type: 'done', ...held })
    } catch (err) {
      const e = toShoalError(err)
      this.#log.info({ key: target.key, code: e.code, reason: e.message }, 'materialize failed')
      send({ type: 'error', code: e.code, message: e.message })
    }
    res.end()
  }

  /**
   * `POST /v1/release {reference} | {layer}`: gives back the references of the most recent
   * materialize of it; answers the references left.
   */
  async release(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const target = parseTarget(await readJson(req, 'release'), 'release')
    const list = this.#held.get(target.key)
    const held = list?.at(-1)
    if (!list || !held) {
      throw new NotMaterializedError(
        `${target.kind === 'image' ? target.reference : target.digest} is not materialized on this agent`
      )
    }
    await this.#c.materializer.release(held.materialization.layers.map((l) => l.digest))
    held.refs--
    if (held.refs === 0) list.pop()
    if (list.length === 0) this.#held.delete(target.key)
    this.#log.info({ key: target.key, refs: held.refs }, 'released')
    sendJson(res, 200, { ...label(held), refs: held.refs })
  }

  /** `POST /v1/prune`: removes every materialized layer no one holds; answers their digests. */
  async prune(_req: IncomingMessage, res: ServerResponse): Promise<void> {
    sendJson(res, 200, { removed: await this.#c.materializer.prune() })
  }

  /** Records one more reference; the same layers again share their entry. */
  #take(target: Target, manifestDigest: string | undefined, m: Materialization): HeldMaterialization {
    const list = this.#held.get(target.key) ?? []
    this.#held.set(target.key, list)
    const same = (h: HeldMaterialization) =>
      h.materialization.layers.map((l) => l.digest).join() === m.layers.map((l) => l.digest).join()
    const i = list.findIndex(same)
    const held: HeldMaterialization =
      i >= 0
        ? (list.splice(i, 1)[0] as HeldMaterialization)
        : {
            ...(target.kind === 'image' ? { reference: target.canonical } : { layer: target.digest }),
            ...(manifestDigest !== undefined && { manifestDigest }),
            refs: 0,
            materialization: m
          }
    held.refs++
    list.push(held) // the most recent last: a release gives back this one first
    this.#log.info({ key: target.key, manifestDigest, refs: held.refs }, 'materialized')
    return { ...held }
  }

  /**
   * Where to fetch a layer the store does not hold complete: `ref` (`<registry>/<repository>`),
   * or the home of a manifest seen that names it; undefined when the store already has it.
   */
  async #layerSource(t: Target & { kind: 'layer' }): Promise<BlobRequest | undefined> {
    if ((await this.#c.store.stat(t.digest))?.complete) return undefined
    if (t.ref !== undefined) {
      const r = parseReference(t.ref)
      return { digest: t.digest, registry: r.registry, repository: r.repository }
    }
    const hint = this.#c.manifests.hint(t.digest)
    if (hint) return { digest: t.digest, ...hint }
    throw new BlobUnknownError(
      `layer ${t.digest} is not in the store and no "ref": "<registry>/<repository>" says where to fetch it`
    )
  }
}

/** The fields that name a held materialization. */
function label(h: HeldMaterialization): Omit<HeldMaterialization, 'refs' | 'materialization'> {
  return {
    ...(h.reference !== undefined && { reference: h.reference }),
    ...(h.layer !== undefined && { layer: h.layer }),
    ...(h.manifestDigest !== undefined && { manifestDigest: h.manifestDigest })
  }
}

async function readJson(req: IncomingMessage, what: string): Promise<Record<string, unknown>> {
  let body: unknown
  try {
    body = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8') || '{}')
  } catch (err) {
    throw err instanceof SyntaxError ? new BadRequestError(`${what} body is not JSON: ${err.message}`) : err
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new BadRequestError(`${what} body must be a JSON object`)
  return body as Record<string, unknown>
}

/** `{reference, platform?}` or `{layer, ref?}`, validated (bad ones throw typed errors). */
function parseTarget(body: Record<string, unknown>, what: string): Target {
  const { reference, layer, platform, ref } = body
  const usage = `${what} body needs "reference": "<image ref>" or "layer": "sha256:<hex>"`
  if ((reference === undefined) === (layer === undefined)) throw new BadRequestError(usage)
  if (reference !== undefined) {
    if (typeof reference !== 'string') throw new BadRequestError(usage)
    if (ref !== undefined) throw new BadRequestError('"ref" goes with "layer", not "reference"')
    if (platform !== undefined && typeof platform !== 'string')
      throw new BadRequestError('"platform" must be a string such as "linux/amd64"')
    const canonical = formatReference(parseReference(reference))
    return {
      kind: 'image',
      key: `image:${canonical}`,
      reference,
      canonical,
      ...(platform !== undefined && { platform: parsePlatform(platform) })
    }
  }
  if (typeof layer !== 'string') throw new BadRequestError(usage)
  if (platform !== undefined) throw new BadRequestError('"platform" goes with "reference", not "layer"')
  if (ref !== undefined && typeof ref !== 'string')
    throw new BadRequestError('"ref" must be a string "<registry>/<repository>"')
  const digest = parseDigest(layer)
  return { kind: 'layer', key: `layer:${digest}`, digest, ...(ref !== undefined && { ref }) }
}
