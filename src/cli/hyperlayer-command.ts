import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { open, rename, rm } from 'node:fs/promises'
import { pino } from 'pino'
import { BadRequestError } from '../errors.ts'
import type { CommandRunner } from '../materialize/command-runner.ts'
import { type DiffMethod, LvmHyperlayers } from '../materialize/hyperlayer.ts'
import { HYPERLAYER_MAGIC, HYPERLAYER_MEDIA_TYPE } from '../materialize/hyperlayer-format.ts'
import { OCI_LAYER_GZIP } from '../oci/media-types.ts'
import { parseReference } from '../oci/reference.ts'
import { type PushBlob, pushImage } from '../registry/registry-push.ts'
import { formatBytes } from './format.ts'

const OCI_LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar'

export interface HyperlayerDiffCommandOptions {
  output: string
  method?: DiffMethod | 'auto'
  json?: boolean
  out?: NodeJS.WritableStream
  runner?: CommandRunner
}

/** What `shoal hyperlayer diff` wrote. */
export interface HyperlayerDiffResult {
  file: string
  digest: string
  size: number
  mediaType: string
  method: DiffMethod
  extents: number
  dataBytes: number
  parent: string | null
}

/** `vg/lv` split; `-` (no parent) gives undefined. */
function volumeArg(arg: string, what: string): { vg: string; lv: string } {
  const m = /^([^/]+)\/([^/]+)$/.exec(arg)
  if (!m) throw new BadRequestError(`${what} must be <volume group>/<volume>, got ${JSON.stringify(arg)}`)
  return { vg: m[1] as string, lv: m[2] as string }
}

/**
 * `shoal hyperlayer diff <parent-vg/lv | -> <child-vg/lv> -o <file>`: writes the blocks that
 * differ between two read-only thin volumes as a hyperlayer (`-`: no parent, a root hyperlayer
 * of every non-zero block of the child). Written to a temporary file, renamed once complete;
 * the child is then tagged with the block identity the patch gives every volume it makes, so
 * a next diff against it chains on.
 */
export async function hyperlayerDiffCommand(
  parentArg: string,
  childArg: string,
  options: HyperlayerDiffCommandOptions
): Promise<HyperlayerDiffResult> {
  const child = volumeArg(childArg, 'the child volume')
  const parent = parentArg === '-' ? undefined : volumeArg(parentArg, 'the parent volume')
  if (parent && parent.vg !== child.vg) throw new BadRequestError('both volumes must be in one volume group')
  const logger = pino({ level: process.env.SHOAL_LOG_LEVEL ?? 'warn' }, process.stderr)
  const tool = new LvmHyperlayers(
    { logger, ...(options.runner && { runner: options.runner }) },
    { vg: child.vg }
  )
  const diff = await tool.diff(parent?.lv, child.lv, { method: options.method ?? 'auto' })
  const tmp = `${options.output}.tmp-${randomBytes(4).toString('hex')}`
  const hash = createHash('sha256')
  let size = 0
  const fh = await open(tmp, 'wx', 0o644)
  try {
    for await (const chunk of diff.stream()) {
      hash.update(chunk)
      size += chunk.byteLength
      await fh.write(chunk)
    }
    await fh.sync()
    await fh.close()
    await rename(tmp, options.output)
  } catch (err) {
    await fh.close().catch(() => {})
    await rm(tmp, { force: true })
    throw err
  }
  const digest = `sha256:${hash.digest('hex')}`
  await tool.adopt(child.lv, diff.header, digest)
  const result: HyperlayerDiffResult = {
    file: options.output,
    digest,
    size,
    mediaType: HYPERLAYER_MEDIA_TYPE,
    method: diff.method,
    extents: diff.extents.length,
    dataBytes: diff.header.dataBytes,
    parent: diff.header.parent ?? null
  }
  const out = options.out ?? process.stdout
  if (options.json) out.write(`${JSON.stringify(result, null, 2)}\n`)
  else {
    out.write(
      `${options.output}: ${digest}, ${formatBytes(size)} (${result.extents} extents, ` +
        `${formatBytes(result.dataBytes)} of blocks, found with ${result.method})\n`
    )
  }
  return result
}

export interface HyperlayerPushCommandOptions {
  /** Layers below this one, bottom first (hyperlayers or tar layers). */
  below?: string[]
  /** Talk HTTP, not HTTPS (default for localhost and 127.0.0.1). */
  plainHttp?: boolean
  json?: boolean
  out?: NodeJS.WritableStream
}

/**
 * `shoal hyperlayer push <file> <ref>`: pushes an image whose top layer is the hyperlayer
 * (`--below` files under it, bottom first) to `ref`. Credentials come from SHOAL_REGISTRY_TOKEN,
 * or SHOAL_REGISTRY_USERNAME and SHOAL_REGISTRY_PASSWORD.
 */
export async function hyperlayerPushCommand(
  file: string,
  refArg: string,
  options: HyperlayerPushCommandOptions
) {
  const ref = parseReference(refArg)
  const local = /^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$/.test(ref.registry)
  const scheme = options.plainHttp || local ? 'http' : 'https'
  const layers: PushBlob[] = []
  for (const path of [...(options.below ?? []), file]) layers.push(await describeFile(path))
  const top = layers.at(-1) as PushBlob
  if (top.mediaType !== HYPERLAYER_MEDIA_TYPE) throw new BadRequestError(`${file} is not a hyperlayer`)
  const env = process.env
  const pushed = await pushImage({
    registry: `${scheme}://${ref.registry}`,
    repository: ref.repository,
    tag: ref.tag ?? 'latest',
    layers,
    ...(env.SHOAL_REGISTRY_TOKEN && { token: env.SHOAL_REGISTRY_TOKEN }),
    ...(env.SHOAL_REGISTRY_USERNAME && { username: env.SHOAL_REGISTRY_USERNAME }),
    ...(env.SHOAL_REGISTRY_PASSWORD && { password: env.SHOAL_REGISTRY_PASSWORD })
  })
  const result = { reference: refArg, manifestDigest: pushed.manifestDigest, layers }
  const out = options.out ?? process.stdout
  if (options.json) out.write(`${JSON.stringify(result, null, 2)}\n`)
  else out.write(`pushed ${refArg}: ${pushed.manifestDigest} (${layers.length} layers)\n`)
  return result
}

/** A file's digest, size and layer media type (from its first bytes). */
async function describeFile(path: string): Promise<PushBlob> {
  const hash = createHash('sha256')
  let size = 0
  let head = Buffer.alloc(0)
  for await (const chunk of createReadStream(path)) {
    const c = chunk as Buffer
    if (head.byteLength < 8) head = Buffer.concat([head, c.subarray(0, 8)])
    hash.update(c)
    size += c.byteLength
  }
  const mediaType =
    head.toString('latin1', 0, 8) === HYPERLAYER_MAGIC
      ? HYPERLAYER_MEDIA_TYPE
      : head[0] === 0x1f && head[1] === 0x8b
        ? OCI_LAYER_GZIP
        : OCI_LAYER_TAR
  return { path, digest: `sha256:${hash.digest('hex')}`, size, mediaType }
}
