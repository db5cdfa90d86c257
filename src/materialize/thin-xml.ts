import type { BlockRange } from './hyperlayer-blocks.ts'

/** One element of thin-provisioning-tools' XML: its name and attributes. */
export interface XmlTag {
  name: string
  attrs: Record<string, string>
  /** `open` `<a>`, `close` `</a>`, `empty` `<a/>`. */
  kind: 'open' | 'close' | 'empty'
}

const TAG_RE = /<(\/?)([A-Za-z_][\w.-]*)((?:\s+[A-Za-z_][\w.-]*\s*=\s*"[^"<]*")*)\s*(\/?)>/y
const ATTR_RE = /([A-Za-z_][\w.-]*)\s*=\s*"([^"<]*)"/g
const SPACE_RE = /\s+/y

/**
 * Splits the XML that `thin_delta` and `thin_dump` print into tags: elements with attributes
 * and nothing else (no text, comments or entities, which these tools never write). Anything
 * else, or tags that do not nest, is an error: a half-written or unexpected report must not be
 * read as "no changes". Small on purpose; see docs/decisions/0009.
 */
export function parseThinXml(text: string): XmlTag[] {
  const tags: XmlTag[] = []
  const open: string[] = []
  let at = 0
  while (at < text.length) {
    SPACE_RE.lastIndex = at
    if (SPACE_RE.exec(text)) {
      at = SPACE_RE.lastIndex
      continue
    }
    TAG_RE.lastIndex = at
    const m = TAG_RE.exec(text)
    if (!m) throw new Error(`unexpected XML at offset ${at}: ${JSON.stringify(text.slice(at, at + 40))}`)
    at = TAG_RE.lastIndex
    const [, slash, name = '', rawAttrs = '', selfClose] = m
    const attrs: Record<string, string> = {}
    for (const a of rawAttrs.matchAll(ATTR_RE)) attrs[a[1] as string] = a[2] as string
    if (slash) {
      if (selfClose || rawAttrs.trim() !== '') throw new Error(`malformed closing tag </${name}>`)
      if (open.pop() !== name) throw new Error(`</${name}> closes nothing open`)
      tags.push({ name, attrs, kind: 'close' })
    } else if (selfClose) tags.push({ name, attrs, kind: 'empty' })
    else {
      open.push(name)
      tags.push({ name, attrs, kind: 'open' })
    }
  }
  if (open.length > 0) throw new Error(`the XML ends inside <${open.at(-1)}>`)
  return tags
}

/** What `thin_delta` reports between two thin devices. */
export interface ThinDelta {
  /** Pool chunk size in 512-byte sectors (`data_block_size`). */
  dataBlockSize: number
  /** Blocks mapped differently (`different`, `left_only`, `right_only`), in pool chunks. */
  changed: BlockRange[]
}

/**
 * Reads `thin_delta` output, terse (`<different begin= length=/>`) or `--verbose`
 * (`<different><range begin= length= .../></different>`). `same` ranges are dropped.
 */
export function parseThinDelta(text: string): ThinDelta {
  const tags = parseThinXml(text)
  const dataBlockSize = superblockBlockSize(tags)
  if (!tags.some((t) => t.name === 'diff')) throw new Error('thin_delta printed no <diff>')
  const changed: BlockRange[] = []
  const kinds = new Set(['different', 'left_only', 'right_only'])
  let section: string | undefined
  for (const t of tags) {
    if (kinds.has(t.name) || t.name === 'same') {
      if (t.kind === 'open') section = t.name
      else if (t.kind === 'close') section = undefined
      else if (kinds.has(t.name)) changed.push(range(t, 'begin', 'length'))
    } else if (t.name === 'range' && t.kind === 'empty' && section !== undefined && section !== 'same') {
      changed.push(range(t, 'begin', 'length'))
    }
  }
  return { dataBlockSize, changed }
}

/** What `thin_dump --dev-id` reports of one thin device: its mapped blocks. */
export function parseThinDump(text: string): ThinDelta {
  const tags = parseThinXml(text)
  const dataBlockSize = superblockBlockSize(tags)
  const changed: BlockRange[] = []
  for (const t of tags) {
    if (t.name === 'range_mapping') changed.push(range(t, 'origin_begin', 'length'))
    else if (t.name === 'single_mapping') changed.push({ block: int(t, 'origin_block'), count: 1 })
  }
  return { dataBlockSize, changed }
}

function superblockBlockSize(tags: XmlTag[]): number {
  const sb = tags.find((t) => t.name === 'superblock')
  if (!sb) throw new Error('no <superblock> in the thin tools output')
  const size = int(sb, 'data_block_size')
  if (size < 1) throw new Error('data_block_size is 0')
  return size
}

function range(t: XmlTag, begin: string, length: string): BlockRange {
  return { block: int(t, begin), count: int(t, length) }
}

function int(t: XmlTag, attr: string): number {
  const v = t.attrs[attr]
  if (v === undefined || !/^\d{1,15}$/.test(v)) throw new Error(`<${t.name}> has no integer ${attr}`)
  return Number(v)
}
