/**
 * A libp2p datastore on LevelDB, so the peer store and the DHT's provider records survive a
 * restart (libp2p's default datastore lives in memory). Written here because datastore-level is
 * not a dependency; it is the same idea in fewer lines on the `level` package already used by the
 * store. Keys are the datastore keys' strings, values raw bytes.
 */
import '../polyfill.ts'
import { BaseDatastore } from 'datastore-core'
import type { Batch, KeyQuery, Pair, Query } from 'interface-datastore'
import { Key } from 'interface-datastore'
import { Level } from 'level'
import type { AbortOptions } from '../interface/common.ts'

/** libp2p's components match a missing key by this error name (interface-store's NotFoundError). */
class DatastoreNotFoundError extends Error {
  override name = 'NotFoundError'
}

/** A `Datastore` on a LevelDB directory. Call `open()` before handing it to libp2p, `close()` after. */
export class LevelDatastore extends BaseDatastore {
  readonly #db: Level<string, Uint8Array>

  constructor(path: string) {
    super()
    this.#db = new Level<string, Uint8Array>(path, { keyEncoding: 'utf8', valueEncoding: 'view' })
  }

  /** Opens (and creates) the database. */
  async open(): Promise<void> {
    await this.#db.open({ createIfMissing: true })
  }

  /** Closes the database; idempotent. */
  async close(): Promise<void> {
    await this.#db.close()
  }

  override async put(key: Key, value: Uint8Array, options?: AbortOptions): Promise<Key> {
    options?.signal?.throwIfAborted()
    await this.#db.put(key.toString(), value)
    return key
  }

  override async get(key: Key, options?: AbortOptions): Promise<Uint8Array> {
    options?.signal?.throwIfAborted()
    const value = await this.#db.get(key.toString())
    if (value === undefined) throw new DatastoreNotFoundError(`no value for ${key.toString()}`)
    return value
  }

  override async has(key: Key, options?: AbortOptions): Promise<boolean> {
    options?.signal?.throwIfAborted()
    return (await this.#db.get(key.toString())) !== undefined
  }

  override async delete(key: Key, options?: AbortOptions): Promise<void> {
    options?.signal?.throwIfAborted()
    await this.#db.del(key.toString())
  }

  override batch(): Batch {
    const ops: Array<{ type: 'put'; key: string; value: Uint8Array } | { type: 'del'; key: string }> = []
    return {
      put: (key, value) => {
        ops.push({ type: 'put', key: key.toString(), value })
      },
      delete: (key) => {
        ops.push({ type: 'del', key: key.toString() })
      },
      commit: async () => {
        await this.#db.batch(ops)
      }
    }
  }

  override async *_all(q: Query, options?: AbortOptions): AsyncGenerator<Pair> {
    for await (const [key, value] of this.#db.iterator(range(q.prefix))) {
      options?.signal?.throwIfAborted()
      yield { key: new Key(key), value }
    }
  }

  override async *_allKeys(q: KeyQuery, options?: AbortOptions): AsyncGenerator<Key> {
    for await (const key of this.#db.keys(range(q.prefix))) {
      options?.signal?.throwIfAborted()
      yield new Key(key)
    }
  }
}

// The base class filters by prefix again; the range only saves reading the rest of the database.
function range(prefix: string | undefined): { gte?: string; lt?: string } {
  if (prefix === undefined || prefix === '') return {}
  return { gte: prefix, lt: `${prefix}\uffff` }
}
