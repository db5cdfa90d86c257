import { createReadStream } from 'node:fs'
import { chmod, type FileHandle, mkdir, open, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Level } from 'level'
import type { Logger } from 'pino'
import { ACCESS_KEY_BYTES } from '../content/access.ts'
import { digestHex, isDigest, sha256Hex } from '../content/digest.ts'
import { checkGeometry, pieceCount, pieceRange } from '../content/pieces.ts'
import {
  BlobUnknownError,
  DiskFullError,
  InternalError,
  ShoalError,
  StoreClosedError,
  StoreCorruptError
} from '../errors.ts'
import type { Clock } from '../interface/clock.ts'
import type { AbortOptions, ByteRange } from '../interface/common.ts'
import type {
  AccessGrant,
  BeginBlobInit,
  BlobAccess,
  BlobInfo,
  BlobStore,
  EvictOptions,
  EvictResult,
  Lease,
  PieceInfo,
  PieceSource,
  PinOptions,
  PutPieceInit,
  ReadOptions,
  StoreUsage
} from '../interface/store.ts'
import { LruQuota } from './lru-quota.ts'
import {
  applyPins,
  beginRecord,
  checkPiece,
  checkReadRange,
  grantedAccess,
  MAX_PIN_NAME,
  pinsAfter
} from './store-checks.ts'

export interface LevelBlobStoreComponents {
  clock: Clock
  logger: Logger
}

export interface LevelBlobStoreInit {
  /** Root directory: `index/` (LevelDB) and `blobs/sha256/<hex>` (one data file per blob). */
  root: string
  quotaBytes: number
  /** Told of every blob evicted for room (the swarm stops announcing it). */
  onEvict?: (digest: string) => void
}

interface BlobRecord {
  size: number
  pieceSize: number
  mediaType?: string
  complete: boolean
  pinned: boolean
  /** The names pinning the blob (absent in records from before named pins: the digest's own). */
  pins?: string[]
  lastUsed: number
  /** Served to peers only against a proof (absent in records from before private blobs: public). */
  private?: boolean
  /** Hex access keys of manifests seen that reference the blob, oldest first. */
  accessKeys?: string[]
}

interface PieceRecord {
  sha256: string
  source: PieceSource
}

type IndexValue = BlobRecord | PieceRecord

const STREAM_CHUNK = 256 * 1024
/** Room held back on the store's file system for the index to open on a full disk (see `#openIndex`). */
const RESERVE_BYTES = 4 * 1024 * 1024

const blobKey = (digest: string) => `b!${digest}`
const pieceKey = (digest: string, index: number) => `p!${digest}!${String(index).padStart(8, '0')}`

/**
 * The production `BlobStore`: one sparse data file per blob and a LevelDB index. A piece is
 * written at its offset before its index record is put, so a record never names bytes that
 * were not written. Partial blobs are not fsync'ed piece by piece (that cost more than the
 * network on a fast registry): instead, on start the store re-hashes every held piece of every
 * partial blob against its record and drops those that a power loss tore or lost, and drops
 * data files with no record and records with no data file. A blob is fsync'ed once, before
 * the synchronous index write that marks it complete; complete blobs are trusted after that.
 */
export class LevelBlobStore implements BlobStore {
  readonly #log: Logger
  readonly #clock: Clock
  readonly #root: string
  readonly #dataDir: string
  readonly #quota: LruQuota
  readonly #onEvict: ((digest: string) => void) | undefined
  readonly #pieces = new Map<string, Map<number, PieceInfo>>()
  /** Access of every blob tracked (public with no keys unless granted). */
  readonly #access = new Map<string, BlobAccess>()
  readonly #writers = new Map<string, Promise<FileHandle>>()
  /** Removals in progress, by digest (see `#purge`). */
  readonly #purging = new Map<string, Promise<void>>()
  #db: Level<string, IndexValue> | undefined

  constructor(components: LevelBlobStoreComponents, init: LevelBlobStoreInit) {
    this.#log = components.logger.child({ component: 'store' })
    this.#clock = components.clock
    this.#root = init.root
    this.#dataDir = join(init.root, 'blobs', 'sha256')
    this.#quota = new LruQuota(init.quotaBytes)
    this.#onEvict = init.onEvict
  }

  async start(): Promise<void> {
    if (this.#db) return
    // Root's only: the store holds private layers, and other users of the node may not read them.
    await mkdir(this.#root, { recursive: true, mode: 0o700 })
    await chmod(this.#root, 0o700)
    await mkdir(this.#dataDir, { recursive: true })
    const db = new Level<string, IndexValue>(join(this.#root, 'index'), { valueEncoding: 'json' })
    await this.#openIndex(db)
    this.#db = db
    try {
      await this.#load(db)
      await this.#reconcile(db)
    } catch (err) {
      this.#db = undefined
      await db.close()
      throw err
    }
    await this.#layReserve()
    const u = this.#quota.usage()
    this.#log.info({ blobs: u.blobs, complete: u.completeBlobs, usedBytes: u.usedBytes }, 'store opened')
  }

  /**
   * Opens the index. LevelDB writes as it opens (a new log, the manifest), so on a full file
   * system it cannot, and an agent stopped by a full disk could not start again to evict. The
   * store keeps `RESERVE_BYTES` in `<root>/reserve` for that moment: given back, the index opens.
   */
  async #openIndex(db: Level<string, IndexValue>): Promise<void> {
    try {
      await db.open()
      return
    } catch (err) {
      if (!isDiskFull(err)) throw err
      const freed = (await stat(this.#reservePath()).catch(() => undefined))?.size ?? 0
      this.#log.warn({ freed }, 'the index cannot open on a full file system: giving back the reserve')
      await rm(this.#reservePath(), { force: true })
    }
    try {
      await db.open()
    } catch (err) {
      if (isDiskFull(err)) {
        throw new DiskFullError('the store index cannot open: the file system is full', { cause: err })
      }
      throw err
    }
  }

  /** Lays the reserve `#openIndex` gives back, when there is room for it (a full disk may not have). */
  async #layReserve(): Promise<void> {
    const path = this.#reservePath()
    if ((await stat(path).catch(() => undefined))?.size === RESERVE_BYTES) return
    try {
      await writeFile(path, new Uint8Array(RESERVE_BYTES))
    } catch (err) {
      await rm(path, { force: true })
      this.#log.warn({ err: (err as Error).message }, 'no room for the store reserve')
    }
  }

  #reservePath(): string {
    return join(this.#root, 'reserve')
  }

  async stop(): Promise<void> {
    const db = this.#db
    if (!db) return
    this.#db = undefined
    await Promise.allSettled([...this.#purging.values()])
    for (const digest of [...this.#writers.keys()]) await this.#closeWriter(digest)
    await db.close()
    this.#quota.blobs.clear()
    this.#pieces.clear()
    this.#access.clear()
  }

  async stat(digest: string): Promise<BlobInfo | undefined> {
    const b = this.#blob(digest, false)
    return b && { ...b }
  }

  async begin(digest: string, init: BeginBlobInit, _o?: AbortOptions): Promise<BlobInfo> {
    const db = this.#open()
    const { info, fresh } = beginRecord(digest, init, this.#quota.blobs.get(digest), this.#clock.now())
    if (!fresh) return { ...info }
    // Choose the victims, forget them and claim the room in one synchronous step, so that
    // concurrent begins can neither count the same victims nor fit in the same free bytes.
    const evicted: Promise<void>[] = []
    for (const victim of this.#quota.victimsFor(digest, init.size)) {
      this.#log.info({ digest: victim }, 'evicting least recently used blob')
      this.#onEvict?.(victim)
      evicted.push(this.#purge(db, victim))
    }
    this.#quota.blobs.set(digest, info)
    this.#pieces.set(digest, new Map())
    this.#access.set(digest, { private: init.private === true, keys: [] })
    try {
      await Promise.all(evicted)
      // A delete of this digest still removing the old file must finish before the new one exists.
      await this.#purging.get(digest)
      const fh = await open(this.#path(digest), 'w')
      try {
        await fh.truncate(init.size)
      } finally {
        await fh.close()
      }
      await db.put(blobKey(digest), this.#record(info))
    } catch (err) {
      if (this.#quota.blobs.get(digest) === info) {
        this.#quota.blobs.delete(digest)
        this.#pieces.delete(digest)
        this.#access.delete(digest)
        await rm(this.#path(digest), { force: true })
      }
      throw this.#failure(db, err, `could not create blob ${digest}`)
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
    } catch (err) {
      if (this.#quota.blobs.get(digest) !== b) {
        throw new BlobUnknownError(`blob ${digest} was deleted while piece ${index} was written`)
      }
      throw this.#failure(db, err, `could not write piece ${index} of ${digest}`)
    }
    // The blob may have been deleted (evicted, failed) while the bytes were being written.
    if (this.#quota.blobs.get(digest) !== b) {
      throw new BlobUnknownError(`blob ${digest} was deleted while piece ${index} was written`)
    }
    // The record is the commit point: only now is the piece held.
    try {
      await db.put(pieceKey(digest, index), { sha256: init.sha256, source: init.source })
    } catch (err) {
      throw this.#failure(db, err, `could not record piece ${index} of ${digest}`)
    }
    held.set(index, { index, sha256: init.sha256, source: init.source })
    b.piecesHeld = held.size
  }

  async read(digest: string, range: ByteRange, options: ReadOptions = {}): Promise<Uint8Array> {
    const b = this.#blob(digest, true)
    checkReadRange(b, range, this.#pieces.get(digest)?.keys() ?? [])
    const length = range.end - range.start
    const out =
      options.into && options.into.byteLength >= length
        ? options.into.subarray(0, length)
        : new Uint8Array(length)
    if (out.byteLength === 0) return out
    const db = this.#open()
    try {
      const fh = await open(this.#path(digest), 'r')
      try {
        let done = 0
        while (done < out.byteLength) {
          const { bytesRead } = await fh.read(out, done, out.byteLength - done, range.start + done)
          if (bytesRead === 0)
            throw new StoreCorruptError(`data file of ${digest} is shorter than its record`)
          done += bytesRead
        }
      } finally {
        await fh.close()
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new BlobUnknownError(`blob ${digest} was deleted while it was read`, { cause: err })
      }
      throw this.#failure(db, err, `could not read blob ${digest}`)
    }
    return out
  }

  async *stream(digest: string, range?: ByteRange): AsyncIterable<Uint8Array> {
    const b = this.#blob(digest, true)
    if (!b.complete) throw new BlobUnknownError(`blob ${digest} is not complete`)
    const r = range ?? { start: 0, end: b.size }
    checkReadRange(b, r, [])
    if (r.end === r.start) return
    const db = this.#open()
    try {
      yield* createReadStream(this.#path(digest), {
        start: r.start,
        end: r.end - 1,
        highWaterMark: STREAM_CHUNK
      })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new BlobUnknownError(`blob ${digest} was deleted while it was read`, { cause: err })
      }
      throw this.#failure(db, err, `could not read blob ${digest}`)
    }
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
    try {
      await (await this.#writer(digest)).sync()
      await this.#closeWriter(digest)
      if (this.#quota.blobs.get(digest) !== b) throw new BlobUnknownError(`blob ${digest} was deleted`)
      const record = { ...this.#record(b), complete: true, lastUsed: this.#clock.now() }
      await db.put(blobKey(digest), record, { sync: true })
      b.complete = true
      b.lastUsed = record.lastUsed
    } catch (err) {
      throw this.#failure(db, err, `could not complete blob ${digest}`)
    }
    return { ...b }
  }

  async delete(digest: string): Promise<void> {
    const db = this.#open()
    if (!this.#quota.blobs.has(digest) && !this.#purging.has(digest)) return
    await this.#purge(db, digest)
  }

  async setPinned(digest: string, pinned: boolean, options: PinOptions = {}): Promise<void> {
    const db = this.#open()
    const b = this.#blob(digest, true)
    const pins = pinsAfter(b, pinned, options.name)
    if (!pins) return
    // In memory first: an eviction choosing victims meanwhile already spares the blob.
    applyPins(b, pins)
    try {
      await db.put(blobKey(digest), this.#record(b))
    } catch (err) {
      throw this.#failure(db, err, `could not record the pins of ${digest}`)
    }
  }

  async evict(options: EvictOptions = {}): Promise<EvictResult> {
    const db = this.#open()
    const evicted: { digest: string; size: number }[] = []
    const removals: Promise<void>[] = []
    // Chosen and forgotten in one synchronous step, as in `begin`.
    for (const b of this.#quota.evictable(options.targetBytes)) {
      this.#log.info({ digest: b.digest, size: b.size }, 'evicting blob')
      this.#onEvict?.(b.digest)
      removals.push(this.#purge(db, b.digest))
      evicted.push({ digest: b.digest, size: b.size })
    }
    await Promise.all(removals)
    const freedBytes = evicted.reduce((n, e) => n + e.size, 0)
    return { evicted, freedBytes, usage: this.#quota.usage() }
  }

  setQuota(bytes: number): void {
    this.#quota.setQuota(bytes)
  }

  acquire(digest: string): Lease {
    return this.#quota.acquire(digest)
  }

  async touch(digest: string): Promise<void> {
    const db = this.#open()
    const b = this.#blob(digest, false)
    if (!b) return
    b.lastUsed = this.#clock.now()
    await db.put(blobKey(digest), this.#record(b))
  }

  async access(digest: string): Promise<BlobAccess | undefined> {
    if (!this.#blob(digest, false)) return undefined
    const a = this.#access.get(digest) ?? { private: false, keys: [] }
    return { private: a.private, keys: [...a.keys] }
  }

  async grantAccess(digest: string, grant: AccessGrant): Promise<void> {
    const db = this.#open()
    const b = this.#blob(digest, true)
    const next = grantedAccess(this.#access.get(digest) ?? { private: false, keys: [] }, grant)
    if (!next) return
    // In memory first: a peer asking meanwhile already meets the stricter rule.
    this.#access.set(digest, next)
    try {
      await db.put(blobKey(digest), this.#record(b))
    } catch (err) {
      throw this.#failure(db, err, `could not record access to ${digest}`)
    }
  }

  async list(): Promise<BlobInfo[]> {
    this.#open()
    return [...this.#quota.blobs.values()].map((b) => ({ ...b }))
  }

  usage(): StoreUsage {
    this.#open()
    return this.#quota.usage()
  }

  /**
   * Forgets a blob at once (its quota is free when this returns, before any await), then removes
   * its records and its file. Runs one removal per digest at a time; `begin` waits for it.
   */
  #purge(db: Level<string, IndexValue>, digest: string): Promise<void> {
    this.#quota.blobs.delete(digest)
    this.#pieces.delete(digest)
    this.#access.delete(digest)
    const previous = this.#purging.get(digest) ?? Promise.resolve()
    const run = previous.then(async () => {
      await this.#closeWriter(digest)
      // The file goes first: it frees the space (a full disk may need it for the index write),
      // and a crash before the records go leaves a record with no file, which start drops.
      await rm(this.#path(digest), { force: true })
      await db.del(blobKey(digest))
      await db.clear({ gte: pieceKey(digest, 0), lt: `p!${digest}!~` })
    })
    // Only a marker for `begin` and `stop` to wait on: the caller of `#purge` gets the failure.
    const done: Promise<void> = run
      .catch(() => undefined)
      .finally(() => {
        if (this.#purging.get(digest) === done) this.#purging.delete(digest)
      })
    this.#purging.set(digest, done)
    return run.catch((err: unknown) => {
      throw this.#failure(db, err, `could not delete blob ${digest}`)
    })
  }

  /** Maps a failure to a typed error: closed store, full disk, or internal. */
  #failure(db: Level<string, IndexValue>, err: unknown, what: string): Error {
    if (err instanceof ShoalError) return err
    if (this.#db !== db) return new StoreClosedError(`${what}: the store was stopped`, { cause: err })
    if (isDiskFull(err)) {
      return new DiskFullError(`${what}: the file system is full`, { cause: err })
    }
    return new InternalError(`${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err })
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

  /** The index record of a blob: its info and its access. */
  #record(b: BlobInfo): BlobRecord {
    const a = this.#access.get(b.digest)
    return {
      ...toRecord(b),
      ...(a?.private && { private: true }),
      ...(a && a.keys.length > 0 && { accessKeys: a.keys.map((k) => Buffer.from(k).toString('hex')) })
    }
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
    const strays: string[] = []
    for await (const [key, value] of db.iterator({ gte: 'b!', lt: 'b!~' })) {
      const digest = key.slice(2)
      const r = value as BlobRecord
      if (!isDigest(digest) || !validGeometry(r)) {
        strays.push(key)
        continue
      }
      this.#quota.blobs.set(digest, {
        digest,
        size: r.size,
        pieceSize: r.pieceSize,
        pieceCount: pieceCount(r.size, r.pieceSize),
        ...(r.mediaType !== undefined && { mediaType: r.mediaType }),
        complete: r.complete,
        piecesHeld: 0,
        pinned: false,
        lastUsed: r.lastUsed
      })
      applyPins(this.#quota.blobs.get(digest) as BlobInfo, pinsOf(digest, r))
      this.#pieces.set(digest, new Map())
      this.#access.set(digest, accessOf(r))
    }
    for await (const [key, value] of db.iterator({ gte: 'p!', lt: 'p!~' })) {
      const sep = key.lastIndexOf('!')
      const digest = key.slice(2, sep)
      const index = Number(key.slice(sep + 1))
      const held = this.#pieces.get(digest)
      const b = this.#quota.blobs.get(digest)
      if (!held || !b || !Number.isInteger(index) || index < 0 || index >= b.pieceCount) {
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
      const bad = await this.#rehash(b, [...held.values()])
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

  /** The indexes of `pieces` whose bytes in the data file no longer hash to their record. */
  async #rehash(b: BlobInfo, pieces: PieceInfo[]): Promise<number[]> {
    const bad: number[] = []
    if (pieces.length === 0) return bad
    const fh = await open(this.#path(b.digest), 'r')
    try {
      const buf = new Uint8Array(b.pieceSize)
      for (const p of pieces) {
        const r = pieceRange(p.index, b.size, b.pieceSize)
        const len = r.end - r.start
        let done = 0
        while (done < len) {
          const { bytesRead } = await fh.read(buf, done, len - done, r.start + done)
          if (bytesRead === 0) break
          done += bytesRead
        }
        if (done !== len || sha256Hex(buf.subarray(0, len)) !== p.sha256) bad.push(p.index)
      }
    } finally {
      await fh.close()
    }
    return bad
  }
}

/** ENOSPC or EDQUOT from the file system, or LevelDB's IO error that wraps one. */
function isDiskFull(err: unknown): boolean {
  const e = err as (Error & { code?: unknown }) | undefined
  if (e?.code === 'ENOSPC' || e?.code === 'EDQUOT') return true
  if (e?.code === 'LEVEL_IO_ERROR' && /No space left|quota exceeded/i.test(e.message)) return true
  return e?.cause !== undefined && e.cause !== err && isDiskFull(e.cause)
}

function validGeometry(r: BlobRecord): boolean {
  try {
    checkGeometry(r.size, r.pieceSize)
    return true
  } catch {
    return false
  }
}

/** The access a record carries; a malformed key is dropped, a malformed flag reads as private. */
function accessOf(r: BlobRecord): BlobAccess {
  const keys = (Array.isArray(r.accessKeys) ? r.accessKeys : [])
    .filter(
      (k): k is string => typeof k === 'string' && /^[a-f0-9]+$/.test(k) && k.length === 2 * ACCESS_KEY_BYTES
    )
    .map((k) => new Uint8Array(Buffer.from(k, 'hex')))
  return { private: r.private !== undefined && r.private !== false, keys }
}

/** The names pinning a blob, from its record; a malformed name is dropped. */
function pinsOf(digest: string, r: BlobRecord): readonly string[] {
  if (!Array.isArray(r.pins)) return Object.freeze(r.pinned === true ? [digest] : [])
  const names = r.pins.filter(
    (p): p is string => typeof p === 'string' && p.length > 0 && p.length <= MAX_PIN_NAME
  )
  return Object.freeze([...new Set(names)])
}

function toRecord(b: BlobInfo): BlobRecord {
  return {
    size: b.size,
    pieceSize: b.pieceSize,
    ...(b.mediaType !== undefined && { mediaType: b.mediaType }),
    complete: b.complete,
    pinned: b.pinned,
    ...(b.pins !== undefined && b.pins.length > 0 && { pins: [...b.pins] }),
    lastUsed: b.lastUsed
  }
}
