import { createReadStream } from 'node:fs'
import { type FileHandle, mkdir, open, readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { Level } from 'level'
import type { Logger } from 'pino'
import { digestHex, parseDigest, sha256Hex } from '../content/digest.ts'
import { checkGeometry, pieceCount, pieceRange } from '../content/pieces.ts'
import {
  BlobUnknownError,
  DiskFullError,
  SizeMismatchError,
  StoreClosedError,
  StoreCorruptError
} from '../errors.ts'
import type { Clock } from '../interface/clock.ts'
import type { AbortOptions, ByteRange } from '../interface/common.ts'
import type {
  BeginBlobInit,
  BlobInfo,
  BlobStore,
  Lease,
  PieceInfo,
  PieceSource,
  PutPieceInit,
  StoreUsage
} from '../interface/store.ts'
import { LruQuota } from './lru-quota.ts'
import { checkPiece, checkReadRange } from './store-checks.ts'

export interface LevelBlobStoreComponents {
  clock: Clock
  logger: Logger
}

export interface LevelBlobStoreInit {
  /** Root directory: `index/` (LevelDB) and `blobs/sha256/<hex>` (one data file per blob). */
  root: string
  quotaBytes: number
}

interface BlobRecord {
  size: number
  pieceSize: number
  mediaType?: string
  complete: boolean
  pinned: boolean
  lastUsed: number
}

interface PieceRecord {
  sha256: string
  source: PieceSource
}

type IndexValue = BlobRecord | PieceRecord

const STREAM_CHUNK = 256 * 1024

const blobKey = (digest: string) => `b!${digest}`
const pieceKey = (digest: string, index: number) => `p!${digest}!${String(index).padStart(8, '0')}`

/**
 * The production `BlobStore`: one sparse data file per blob and a LevelDB index. A piece is
 * written at its offset and fdatasync'ed before its index record is put, so the record is the
 * commit point: a crash at any moment leaves either a held, durable piece or no record at all.
 * On start the store drops data files with no record and records with no data file, and
 * re-hashes every held piece of a partial blob, so a torn write can never be served.
 */
export class LevelBlobStore implements BlobStore {
  readonly #log: Logger
  readonly #clock: Clock
  readonly #root: string
  readonly #dataDir: string
  readonly #quota: LruQuota
  readonly #pieces = new Map<string, Map<number, PieceInfo>>()
  readonly #writers = new Map<string, Promise<FileHandle>>()
  #db: Level<string, IndexValue> | undefined

  constructor(components: LevelBlobStoreComponents, init: LevelBlobStoreInit) {
    this.#log = components.logger.child({ component: 'store' })
    this.#clock = components.clock
    this.#root = init.root
    this.#dataDir = join(init.root, 'blobs', 'sha256')
    this.#quota = new LruQuota(init.quotaBytes)
  }

  async start(): Promise<void> {
    if (this.#db) return
    await mkdir(this.#dataDir, { recursive: true })
    const db = new Level<string, IndexValue>(join(this.#root, 'index'), { valueEncoding: 'json' })
    await db.open()
    this.#db = db
    try {
      await this.#load(db)
      await this.#reconcile(db)
    } catch (err) {
      this.#db = undefined
      await db.close()
      throw err
    }
    const u = this.#quota.usage()
    this.#log.info({ blobs: u.blobs, complete: u.completeBlobs, usedBytes: u.usedBytes }, 'store opened')
  }

  async stop(): Promise<void> {
    const db = this.#db
    if (!db) return
    this.#db = undefined
    for (const digest of [...this.#writers.keys()]) await this.#closeWriter(digest)
    await db.close()
    this.#quota.blobs.clear()
    this.#pieces.clear()
  }

  async stat(digest: string): Promise<BlobInfo | undefined> {
    const b = this.#blob(digest, false)
    return b && { ...b }
  }

  async begin(digest: string, init: BeginBlobInit, _o?: AbortOptions): Promise<BlobInfo> {
    const db = this.#open()
    parseDigest(digest)
    checkGeometry(init.size, init.pieceSize)
    const existing = this.#quota.blobs.get(digest)
    if (existing) {
      if (existing.size !== init.size || existing.pieceSize !== init.pieceSize) {
        throw new SizeMismatchError(
          `blob ${digest} was begun with size ${existing.size} (pieces of ${existing.pieceSize}); now claimed ${init.size} (pieces of ${init.pieceSize})`
        )
      }
      return { ...existing }
    }
    for (const victim of this.#quota.victimsFor(digest, init.size)) {
      this.#log.info({ digest: victim }, 'evicting least recently used blob')
      await this.delete(victim)
    }
    const info: BlobInfo = {
      digest,
      size: init.size,
      pieceSize: init.pieceSize,
      pieceCount: pieceCount(init.size, init.pieceSize),
      ...(init.mediaType !== undefined && { mediaType: init.mediaType }),
      complete: false,
      piecesHeld: 0,
      pinned: false,
      lastUsed: this.#clock.now()
    }
    // Claim the quota before any await, so concurrent begins cannot both fit in the same room.
    this.#quota.blobs.set(digest, info)
    this.#pieces.set(digest, new Map())
    try {
      const fh = await open(this.#path(digest), 'w')
      try {
        await fh.truncate(init.size)
      } finally {
        await fh.close()
      }
      await db.put(blobKey(digest), toRecord(info))
    } catch (err) {
      this.#quota.blobs.delete(digest)
      this.#pieces.delete(digest)
      await rm(this.#path(digest), { force: true })
      throw diskError(err, `could not create blob ${digest}`)
    }
    return { ...info }
  }

  async pieces(digest: string): Promise<PieceInfo[]> {
    this.#open()
    return [...(this.#pieces.get(digest)?.values() ?? [])].sort((a, b) => a.index - b.index)
  }

  async putPiece(digest: string, index: number, data: Uint8Array, init: PutPieceInit): Promise<void> {
    const db = this.#open()
    const b = this.#blob(digest, true)
    const range = checkPiece(b, index, data, init.sha256)
    const held = this.#pieces.get(digest) as Map<number, PieceInfo>
    if (held.has(index) || b.complete) return
    try {
      const fh = await this.#writer(digest)
      let done = 0
      while (done < data.byteLength) {
        const { bytesWritten } = await fh.write(data, done, data.byteLength - done, range.start + done)
        done += bytesWritten
      }
      await fh.datasync()
    } catch (err) {
      throw diskError(err, `could not write piece ${index} of ${digest}`)
    }
    // The blob may have been deleted (evicted, failed) while the bytes were being written.
    if (this.#quota.blobs.get(digest) !== b) return
    await db.put(pieceKey(digest, index), { sha256: init.sha256, source: init.source })
    held.set(index, { index, sha256: init.sha256, source: init.source })
    b.piecesHeld = held.size
  }

  async read(digest: string, range: ByteRange): Promise<Uint8Array> {
    const b = this.#blob(digest, true)
    checkReadRange(b, range, this.#pieces.get(digest)?.keys() ?? [])
    const out = new Uint8Array(range.end - range.start)
    const fh = await open(this.#path(digest), 'r')
    try {
      let done = 0
      while (done < out.byteLength) {
        const { bytesRead } = await fh.read(out, done, out.byteLength - done, range.start + done)
        if (bytesRead === 0) throw new StoreCorruptError(`data file of ${digest} is shorter than its record`)
        done += bytesRead
      }
    } finally {
      await fh.close()
    }
    return out
  }

  async *stream(digest: string, range?: ByteRange): AsyncIterable<Uint8Array> {
    const b = this.#blob(digest, true)
    if (!b.complete) throw new BlobUnknownError(`blob ${digest} is not complete`)
    const r = range ?? { start: 0, end: b.size }
    checkReadRange(b, r, [])
    if (r.end === r.start) return
    yield* createReadStream(this.#path(digest), {
      start: r.start,
      end: r.end - 1,
      highWaterMark: STREAM_CHUNK
    })
  }

  async complete(digest: string): Promise<BlobInfo> {
    const db = this.#open()
    const b = this.#blob(digest, true)
    if (b.complete) return { ...b }
    if (b.piecesHeld !== b.pieceCount) {
      throw new StoreCorruptError(
        `blob ${digest} cannot complete: ${b.piecesHeld} of ${b.pieceCount} pieces held`
      )
    }
    const fh = await this.#writers.get(digest)
    if (fh) await fh.sync()
    await this.#closeWriter(digest)
    b.complete = true
    b.lastUsed = this.#clock.now()
    await db.put(blobKey(digest), toRecord(b), { sync: true })
    return { ...b }
  }

  async delete(digest: string): Promise<void> {
    const db = this.#open()
    const pieces = this.#pieces.get(digest)
    this.#quota.blobs.delete(digest)
    this.#pieces.delete(digest)
    await this.#closeWriter(digest)
    const ops: { type: 'del'; key: string }[] = [{ type: 'del', key: blobKey(digest) }]
    for (const i of pieces?.keys() ?? []) ops.push({ type: 'del', key: pieceKey(digest, i) })
    await db.batch(ops)
    await rm(this.#path(digest), { force: true })
  }

  async setPinned(digest: string, pinned: boolean): Promise<void> {
    const db = this.#open()
    const b = this.#blob(digest, true)
    b.pinned = pinned
    await db.put(blobKey(digest), toRecord(b))
  }

  acquire(digest: string): Lease {
    return this.#quota.acquire(digest)
  }

  async touch(digest: string): Promise<void> {
    const db = this.#open()
    const b = this.#blob(digest, false)
    if (!b) return
    b.lastUsed = this.#clock.now()
    await db.put(blobKey(digest), toRecord(b))
  }

  async list(): Promise<BlobInfo[]> {
    this.#open()
    return [...this.#quota.blobs.values()].map((b) => ({ ...b }))
  }

  usage(): StoreUsage {
    this.#open()
    return this.#quota.usage()
  }

  #open(): Level<string, IndexValue> {
    if (!this.#db) throw new StoreClosedError('the store is not open')
    return this.#db
  }

  #blob(digest: string, required: true): BlobInfo
  #blob(digest: string, required: false): BlobInfo | undefined
  #blob(digest: string, required: boolean): BlobInfo | undefined {
    this.#open()
    const b = this.#quota.blobs.get(digest)
    if (!b && required) throw new BlobUnknownError(`the store has no blob ${digest}`)
    return b
  }

  #path(digest: string): string {
    return join(this.#dataDir, digestHex(digest))
  }

  #writer(digest: string): Promise<FileHandle> {
    let w = this.#writers.get(digest)
    if (!w) {
      w = open(this.#path(digest), 'r+')
      this.#writers.set(digest, w)
      w.catch(() => this.#writers.delete(digest))
    }
    return w
  }

  async #closeWriter(digest: string): Promise<void> {
    const w = this.#writers.get(digest)
    if (!w) return
    this.#writers.delete(digest)
    await w.then((fh) => fh.close()).catch(() => undefined)
  }

  async #load(db: Level<string, IndexValue>): Promise<void> {
    for await (const [key, value] of db.iterator({ gte: 'b!', lt: 'b!~' })) {
      const digest = key.slice(2)
      const r = value as BlobRecord
      this.#quota.blobs.set(digest, {
        digest,
        size: r.size,
        pieceSize: r.pieceSize,
        pieceCount: pieceCount(r.size, r.pieceSize),
        ...(r.mediaType !== undefined && { mediaType: r.mediaType }),
        complete: r.complete,
        piecesHeld: 0,
        pinned: r.pinned,
        lastUsed: r.lastUsed
      })
      this.#pieces.set(digest, new Map())
    }
    const strays: string[] = []
    for await (const [key, value] of db.iterator({ gte: 'p!', lt: 'p!~' })) {
      const sep = key.lastIndexOf('!')
      const digest = key.slice(2, sep)
      const index = Number(key.slice(sep + 1))
      const held = this.#pieces.get(digest)
      if (!held) {
        strays.push(key)
        continue
      }
      const r = value as PieceRecord
      held.set(index, { index, sha256: r.sha256, source: r.source })
    }
    if (strays.length > 0) await db.batch(strays.map((key) => ({ type: 'del' as const, key })))
    for (const [digest, held] of this.#pieces) {
      const b = this.#quota.blobs.get(digest)
      if (b) b.piecesHeld = held.size
    }
  }

  /** Makes the index and the data files agree, and drops any held piece whose bytes changed. */
  async #reconcile(db: Level<string, IndexValue>): Promise<void> {
    const files = new Set(await readdir(this.#dataDir))
    for (const b of [...this.#quota.blobs.values()]) {
      const hex = digestHex(b.digest)
      const st = files.has(hex) ? await stat(this.#path(b.digest)).catch(() => undefined) : undefined
      files.delete(hex)
      if (!st || st.size !== b.size) {
        this.#log.warn(
          { digest: b.digest, fileSize: st?.size },
          'data file missing or of the wrong size; blob dropped'
        )
        await this.delete(b.digest)
        continue
      }
      if (b.complete) continue
      // A partial blob: every held piece must still hash to its record (a torn or lost write
      // after a crash, or a file changed behind the agent's back, is caught here).
      const held = this.#pieces.get(b.digest) as Map<number, PieceInfo>
      const bad: number[] = []
      for (const p of held.values()) {
        const data = await this.read(b.digest, pieceRange(p.index, b.size, b.pieceSize))
        if (sha256Hex(data) !== p.sha256) bad.push(p.index)
      }
      if (bad.length > 0) {
        this.#log.warn({ digest: b.digest, pieces: bad }, 'held pieces failed their hash on restart; dropped')
        for (const i of bad) held.delete(i)
        await db.batch(bad.map((i) => ({ type: 'del' as const, key: pieceKey(b.digest, i) })))
        b.piecesHeld = held.size
      }
    }
    for (const orphan of files) {
      this.#log.info({ file: orphan }, 'removing data file with no index record')
      await rm(join(this.#dataDir, orphan), { force: true, recursive: true })
    }
  }
}

function toRecord(b: BlobInfo): BlobRecord {
  return {
    size: b.size,
    pieceSize: b.pieceSize,
    ...(b.mediaType !== undefined && { mediaType: b.mediaType }),
    complete: b.complete,
    pinned: b.pinned,
    lastUsed: b.lastUsed
  }
}

function diskError(err: unknown, what: string): Error {
  const code = (err as NodeJS.ErrnoException)?.code
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new DiskFullError(`${what}: the file system is full`, { cause: err })
  }
  return err instanceof Error ? err : new Error(String(err))
}
