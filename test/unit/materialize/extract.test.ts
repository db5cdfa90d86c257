import assert from 'node:assert/strict'
import {
  chmod,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  writeFile as writeFileFs
} from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { gzipSync } from 'node:zlib'
import { BlobUnknownError, UnsafeLayerError } from '../../../src/errors.ts'
import { extractLayer } from '../../../src/materialize/extract.ts'
import { base256, chunked, getXattr, patchHeader, SIZE_FIELD, type TarSpec, tarOf, zstdOf } from './tars.ts'

const file = (
  name: string,
  data: string | Uint8Array = 'x',
  extra: Partial<TarSpec['header']> = {}
): TarSpec => ({
  header: { name, type: 'file', mode: 0o644, ...extra },
  data
})
const dir = (name: string, extra: Partial<TarSpec['header']> = {}): TarSpec => ({
  header: { name, type: 'directory', mode: 0o755, ...extra }
})
const symlink = (name: string, target: string): TarSpec => ({
  header: { name, type: 'symlink', linkname: target }
})
const hardlink = (name: string, target: string): TarSpec => ({
  header: { name, type: 'link', linkname: target }
})

describe('extractLayer', () => {
  let base: string
  let n = 0
  /** A fresh parent directory per case: after a refusal it must still be empty. */
  const fresh = async () => {
    const parent = join(base, `case-${n++}`)
    await mkdir(parent)
    return { parent, layer: join(parent, 'layer') }
  }

  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'shoal-extract-'))
  })
  after(async () => {
    await rm(base, { recursive: true, force: true })
  })

  describe('refuses hostile layers and leaves nothing behind', () => {
    // Each case gets `parent`, the directory that must stay empty, and returns the tar.
    const cases: Array<[string, (parent: string) => Promise<Buffer>]> = [
      ['a ../ path', async () => tarOf([file('../x')])],
      ['a ../ path in the middle', async () => tarOf([dir('a/'), file('a/../../x')])],
      ['an absolute path', async (parent) => tarOf([file(join(parent, 'x'))])],
      ['an absolute path to /etc', async () => tarOf([file('/etc/shoal-extract-test')])],
      [
        'a file written through a symlink to /',
        async () => tarOf([symlink('evil', '/'), file('evil/tmp/x')])
      ],
      [
        'a file written through a symlink to outside',
        async (parent) => tarOf([symlink('s', parent), file('s/x')])
      ],
      [
        'a file written through a symlink chain',
        async (parent) => tarOf([symlink('a', 'b'), symlink('b', parent), file('a/x')])
      ],
      ['a directory made through a relative symlink', async () => tarOf([symlink('up', '..'), dir('up/d/')])],
      ['a hard link to outside', async () => tarOf([hardlink('h', '../outside')])],
      ['a hard link to an absolute path', async () => tarOf([hardlink('h', '/etc/passwd')])],
      [
        'a hard link through a symlink',
        async () => tarOf([symlink('etc', '/etc'), hardlink('h', 'etc/passwd')])
      ],
      ['a hard link to a missing file', async () => tarOf([hardlink('h', 'nope')])],
      ['a hard link to a later file', async () => tarOf([hardlink('h', 'later'), file('later')])],
      ['a hard link to a directory', async () => tarOf([dir('d/'), hardlink('h', 'd')])],
      ['a whiteout of ..', async () => tarOf([file('a/.wh...', '')])],
      ['a whiteout through a symlink', async (parent) => tarOf([symlink('s', parent), file('s/.wh.x', '')])],
      [
        'an opaque marker through a symlink',
        async () => tarOf([symlink('s', '/tmp'), file('s/.wh..wh..opq', '')])
      ],
      [
        'a symlink whose target has a NUL byte',
        async () => tarOf([{ header: { name: 's', type: 'symlink', pax: { linkpath: 'a\0b' } } }])
      ],
      ['a file below a file', async () => tarOf([file('f'), file('f/x')])],
      ['a root that is a file', async () => tarOf([file('./', '')])],
      [
        'a negative size',
        async () => patchHeader(await tarOf([file('neg', '')]), 0, SIZE_FIELD, base256(-1024n))
      ],
      [
        'an absurd size',
        async () => patchHeader(await tarOf([file('big', '')]), 0, SIZE_FIELD, base256(100n * 2n ** 40n))
      ],
      [
        'a size beyond 2^53',
        async () => patchHeader(await tarOf([file('huge', '')]), 0, SIZE_FIELD, base256(2n ** 70n))
      ],
      [
        'a header with a bad checksum',
        async () => {
          const t = await tarOf([file('a', 'hello')])
          t[0] = 'b'.charCodeAt(0)
          return t
        }
      ],
      ['a garbage header', async () => Buffer.concat([Buffer.alloc(512, 0x41), await tarOf([file('a')])])],
      ['a truncated entry', async () => (await tarOf([file('a', 'y'.repeat(5000))])).subarray(0, 2048)],
      [
        'an entry cut within its last block',
        async () => (await tarOf([file('a', 'y'.repeat(1000))])).subarray(0, 512 + 900)
      ],
      [
        'a truncated header',
        async () => (await tarOf([file('a', 'y'), file('b', 'z')])).subarray(0, 1024 + 300)
      ],
      [
        'a corrupt gzip stream',
        async () => Buffer.concat([gzipSync(await tarOf([file('a')])).subarray(0, 20)])
      ],
      ['gzip magic and garbage', async () => Buffer.from([0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9])],
      ['zstd magic and garbage', async () => Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4, 5, 6, 7, 8])],
      ['a uid that is not a number', async () => tarOf([file('u', 'x', { pax: { uid: 'root' } })])],
      // Found by the hardening suite: each of these failed as a command, an INTERNAL error.
      [
        'an xattr outside any namespace',
        async () => tarOf([file('x', 'x', { pax: { 'SCHILY.xattr.bogus': 'v' } })])
      ],
      [
        'an xattr name with a NUL byte',
        async () => tarOf([file('x', 'x', { pax: { 'SCHILY.xattr.user.a\0b': 'v' } })])
      ],
      [
        'an xattr value over 64 KiB',
        async () => tarOf([file('x', 'x', { pax: { 'SCHILY.xattr.user.big': 'v'.repeat(70_000) } })])
      ],
      [
        'a capability the kernel does not parse',
        async () => tarOf([file('x', 'x', { pax: { 'SCHILY.xattr.security.capability': 'garbage' } })])
      ],
      [
        'an entry of unknown type',
        async () => patchHeader(await tarOf([file('t', '')]), 0, 156, Buffer.from('X'))
      ]
    ]
    for (const [name, make] of cases) {
      it(`refuses ${name}`, async () => {
        const { parent, layer } = await fresh()
        const tar = await make(parent)
        await assert.rejects(extractLayer(chunked(tar, 1000), layer), (err: unknown) => {
          assert.ok(err instanceof UnsafeLayerError, `expected UnsafeLayerError, got ${String(err)}`)
          assert.equal(err.code, 'LAYER_UNSAFE')
          return true
        })
        assert.deepEqual(await readdir(parent), [], 'nothing may be left next to the layer')
        await assert.rejects(stat('/etc/shoal-extract-test'), { code: 'ENOENT' })
        await assert.rejects(stat('/tmp/x'), { code: 'ENOENT' })
      })
    }

    it('passes a source error through and leaves nothing', async () => {
      const { parent, layer } = await fresh()
      const tar = gzipSync(await tarOf([file('a', 'z'.repeat(100_000))]))
      async function* failing() {
        yield tar.subarray(0, 100)
        throw new BlobUnknownError('gone')
      }
      await assert.rejects(extractLayer(failing(), layer), BlobUnknownError)
      assert.deepEqual(await readdir(parent), [])
    })

    it('does not touch an existing layer directory', async () => {
      const { parent, layer } = await fresh()
      await extractLayer(chunked(await tarOf([file('first')]), 512), layer)
      await assert.rejects(extractLayer(chunked(await tarOf([file('second')]), 512), layer), {
        code: 'ENOTEMPTY'
      })
      assert.deepEqual(await readdir(parent), ['layer'])
      assert.deepEqual(await readdir(layer), ['first'])
    })
  })

  describe('extracts', () => {
    const mtime = new Date('2024-01-01T00:00:00Z')
    const corpus = (): Promise<Buffer> =>
      tarOf([
        dir('./', { mode: 0o755, mtime }),
        dir('bin/', { mtime }),
        file('bin/tool', '#!/bin/sh\n', { mode: 0o4755, uid: 1000, gid: 2000, mtime }),
        file('bin/secret', 'secret', { mode: 0o600, mtime }),
        hardlink('bin/tool-link', 'bin/tool'),
        symlink('bin/sh', '/bin/busybox'),
        symlink('bin/up', '../..'),
        dir('tmp/', { mode: 0o1777, mtime }),
        // An implicit parent: no entry for `deep/` or `deep/er/`.
        file('deep/er/file', 'deep', { mtime }),
        { header: { name: 'dev/null', type: 'character-device', mode: 0o666, devmajor: 1, devminor: 3 } },
        { header: { name: 'run/pipe', type: 'fifo', mode: 0o644 } },
        file('data/.wh.gone.txt', ''),
        // Per the OCI spec a whiteout hides lower layers only, not this layer's own file.
        file('data/mine', 'kept'),
        file('data/.wh.mine', ''),
        file('opaque/.wh..wh..opq', ''),
        dir('opaque/', { mode: 0o750, mtime }),
        file('opaque/new', 'new'),
        file('.wh..wh.plnk', ''),
        file('attrs', 'a', {
          pax: {
            'SCHILY.xattr.user.shoal': 'kept',
            'SCHILY.xattr.trusted.overlay.redirect': '/elsewhere'
          }
        }),
        // Replaced by a later entry: the file goes where the symlink was, never through it.
        symlink('replaced', '/etc/passwd'),
        file('replaced', 'mine', { mtime })
      ])

    async function check(layer: string) {
      const root = await stat(layer)
      assert.equal(root.mode & 0o7777, 0o755)
      const tool = await stat(join(layer, 'bin/tool'))
      assert.equal(tool.mode & 0o7777, 0o4755, 'setuid survives chown')
      assert.deepEqual([tool.uid, tool.gid], [1000, 2000])
      assert.equal(tool.mtime.getTime(), mtime.getTime())
      assert.equal(await readFile(join(layer, 'bin/tool'), 'utf8'), '#!/bin/sh\n')
      assert.equal((await stat(join(layer, 'bin/secret'))).mode & 0o7777, 0o600)
      const link = await stat(join(layer, 'bin/tool-link'))
      assert.equal(link.ino, tool.ino, 'a hard link shares the inode')
      assert.equal(tool.nlink, 2)
      assert.equal(await readlink(join(layer, 'bin/sh')), '/bin/busybox')
      assert.equal(await readlink(join(layer, 'bin/up')), '../..')
      assert.equal((await stat(join(layer, 'bin'))).mtime.getTime(), mtime.getTime(), 'dir mtimes set last')
      assert.equal((await stat(join(layer, 'tmp'))).mode & 0o7777, 0o1777)
      assert.equal((await stat(join(layer, 'deep/er'))).mode & 0o7777, 0o755)
      const devNull = await lstat(join(layer, 'dev/null'))
      assert.ok(devNull.isCharacterDevice())
      assert.equal(devNull.rdev, (1 << 8) | 3)
      assert.ok((await lstat(join(layer, 'run/pipe'))).isFIFO())
      const gone = await lstat(join(layer, 'data/gone.txt'))
      assert.ok(gone.isCharacterDevice() && gone.rdev === 0, 'a whiteout is the device 0:0')
      assert.deepEqual((await readdir(join(layer, 'data'))).sort(), ['gone.txt', 'mine'])
      assert.equal(await readFile(join(layer, 'data/mine'), 'utf8'), 'kept')
      assert.equal(await getXattr(join(layer, 'opaque'), 'trusted.overlay.opaque'), 'y')
      assert.equal((await stat(join(layer, 'opaque'))).mode & 0o7777, 0o750)
      assert.deepEqual(await readdir(join(layer, 'opaque')), ['new'])
      assert.equal(await getXattr(join(layer, 'attrs'), 'user.shoal'), 'kept')
      assert.equal(await getXattr(join(layer, 'attrs'), 'trusted.overlay.redirect'), undefined)
      assert.ok(!(await readdir(layer)).includes('.wh..wh.plnk'), 'AUFS bookkeeping is dropped')
      assert.equal(await readFile(join(layer, 'replaced'), 'utf8'), 'mine')
      assert.notEqual(await readFile('/etc/passwd', 'utf8'), 'mine')
    }

    it('an uncompressed tar, in odd-sized chunks', async () => {
      const { layer } = await fresh()
      const result = await extractLayer(chunked(await corpus(), 7), layer)
      assert.ok(result.entries >= 19)
      await check(layer)
    })

    it('a gzip tar', async () => {
      const { parent, layer } = await fresh()
      await extractLayer(chunked(gzipSync(await corpus()), 3), layer)
      await check(layer)
      assert.deepEqual(await readdir(parent), ['layer'])
    })

    it('a zstd tar', async () => {
      const { layer } = await fresh()
      await extractLayer(chunked(await zstdOf(await corpus()), 1000), layer)
      await check(layer)
    })

    it('a large file across many chunks, zstd and gzip', async () => {
      const data = Buffer.alloc(5 * 1024 * 1024 + 123)
      for (let i = 0; i < data.length; i++) data[i] = (i * 7919) % 251
      const tar = await tarOf([file('big', data)])
      const packed = [gzipSync(tar), await zstdOf(tar)]
      for (const bytes of packed) {
        const { layer } = await fresh()
        const result = await extractLayer(chunked(bytes, 64 * 1024), layer)
        assert.equal(result.bytes, data.length)
        assert.ok(data.equals(await readFile(join(layer, 'big'))))
      }
    })

    it('an empty layer', async () => {
      const { layer } = await fresh()
      await extractLayer(chunked(await tarOf([]), 512), layer)
      assert.deepEqual(await readdir(layer), [])
    })

    it('a tar without end-of-archive blocks (as umoci writes some)', async () => {
      const { layer } = await fresh()
      const tar = await tarOf([file('z', 'z'.repeat(1024))])
      await extractLayer(chunked(tar.subarray(0, 512 + 1024), 100), layer)
      assert.equal(await readFile(join(layer, 'z'), 'utf8'), 'z'.repeat(1024))
    })

    it('a tar whose last entry lacks its padding too (as umoci writes some)', async () => {
      const { layer } = await fresh()
      const tar = await tarOf([file('a', 'a'), file('z', 'z'.repeat(1000))])
      await extractLayer(chunked(gzipSync(tar.subarray(0, 3 * 512 + 1000)), 100), layer)
      assert.equal(await readFile(join(layer, 'z'), 'utf8'), 'z'.repeat(1000))
    })
  })
})

describe("extractLayer with whiteouts: 'delete' (in place, on the layers below)", () => {
  let base: string
  let n = 0
  const mtime = new Date('2024-01-01T00:00:00Z')
  /** The lower layers' tree, extracted the ordinary way, and a directory outside it. */
  const lower = async () => {
    const parent = join(base, `case-${n++}`)
    await mkdir(join(parent, 'outside'), { recursive: true })
    const root = join(parent, 'root')
    const outside = join(parent, 'outside')
    await extractLayer(
      chunked(
        await tarOf([
          dir('etc/', { mode: 0o755 }),
          file('etc/passwd', 'root:x:0:0'),
          file('etc/gone', 'lower'),
          dir('var/', { mode: 0o700, uid: 7, gid: 7 }),
          dir('var/cache/'),
          file('var/cache/a', 'a'),
          file('var/cache/sub/b', 'b'),
          file('var/keep', 'keep'),
          dir('tree/'),
          file('tree/x/y', 'y'),
          symlink('lib', 'usr/lib'),
          file('usr/lib/libc.so', 'libc'),
          symlink('escape', outside),
          file('was-file', 'f'),
          dir('was-dir/'),
          file('was-dir/inner', 'i')
        ]),
        512
      ),
      root
    )
    await writeFileFs(join(outside, 'victim'), 'safe')
    return { root, outside }
  }
  const apply = (root: string, entries: TarSpec[]) =>
    tarOf(entries).then((tar) => extractLayer(chunked(tar, 700), root, { whiteouts: 'delete' }))
  const ls = async (path: string) => (await readdir(path)).sort()

  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'shoal-apply-'))
  })
  after(async () => {
    await rm(base, { recursive: true, force: true })
  })

  it('deletes whited-out files and directories of the layers below', async () => {
    const { root } = await lower()
    await apply(root, [file('etc/.wh.gone', ''), file('.wh.tree', ''), file('etc/new', 'new')])
    assert.deepEqual(await ls(join(root, 'etc')), ['new', 'passwd'])
    assert.ok(!(await ls(root)).includes('tree'))
    assert.equal(await readFile(join(root, 'etc/passwd'), 'utf8'), 'root:x:0:0')
  })

  it('empties an opaque directory of what was below, keeping what the layer wrote', async () => {
    const { root } = await lower()
    await apply(root, [
      file('var/cache/mine-before', 'm'),
      file('var/cache/.wh..wh..opq', ''),
      file('var/cache/mine-after', 'm')
    ])
    assert.deepEqual(await ls(join(root, 'var/cache')), ['mine-after', 'mine-before'])
    assert.deepEqual(await ls(join(root, 'var')), ['cache', 'keep'])
    const v = await stat(join(root, 'var'))
    assert.deepEqual([v.mode & 0o7777, v.uid], [0o700, 7], 'a directory not listed keeps its metadata')
  })

  it('clears lower content below a directory the layer lists, inside an opaque one', async () => {
    const { root } = await lower()
    await apply(root, [dir('var/', { mode: 0o750 }), dir('var/cache/'), file('var/.wh..wh..opq', '')])
    assert.deepEqual(await ls(join(root, 'var')), ['cache'])
    assert.deepEqual(await ls(join(root, 'var/cache')), [])
    assert.equal((await stat(join(root, 'var'))).mode & 0o7777, 0o750)
  })

  it("keeps the layer's own file that a later whiteout names", async () => {
    const { root } = await lower()
    await apply(root, [file('etc/mine', 'kept'), file('etc/.wh.mine', ''), file('etc/.wh.passwd', '')])
    assert.deepEqual(await ls(join(root, 'etc')), ['gone', 'mine'])
  })

  it('keeps what the layer wrote inside a whited-out lower directory', async () => {
    const { root } = await lower()
    await apply(root, [file('tree/x/mine', 'm'), file('.wh.tree', '')])
    assert.deepEqual(await ls(join(root, 'tree')), ['x'])
    assert.deepEqual(await ls(join(root, 'tree/x')), ['mine'])
  })

  it('replaces a lower symlink in an entry path with a directory, never writing through it', async () => {
    const { root, outside } = await lower()
    await apply(root, [file('escape/victim', 'owned'), file('lib/new.so', 'n')])
    assert.equal(await readFile(join(outside, 'victim'), 'utf8'), 'safe')
    assert.ok((await lstat(join(root, 'escape'))).isDirectory())
    assert.deepEqual(await ls(join(root, 'lib')), ['new.so'])
    assert.equal((await stat(join(root, 'lib'))).mode & 0o7777, 0o755)
    assert.deepEqual(await ls(join(root, 'usr/lib')), ['libc.so'])
  })

  it('deletes nothing through a lower symlink, nor creates a directory for a whiteout', async () => {
    const { root, outside } = await lower()
    await apply(root, [
      file('escape/.wh.victim', ''),
      file('nodir/.wh.x', ''),
      file('escape/.wh..wh..opq', '')
    ])
    assert.equal(await readFile(join(outside, 'victim'), 'utf8'), 'safe')
    assert.ok((await lstat(join(root, 'escape'))).isSymbolicLink())
    assert.ok(!(await ls(root)).includes('nodir'))
  })

  it('replaces a lower file by a directory and a lower directory by a file', async () => {
    const { root } = await lower()
    await apply(root, [dir('was-file/'), file('was-file/in', 'i'), file('was-dir', 'now a file')])
    assert.deepEqual(await ls(join(root, 'was-file')), ['in'])
    assert.equal(await readFile(join(root, 'was-dir'), 'utf8'), 'now a file')
  })

  it('keeps the root as it is unless the layer lists it', async () => {
    const { root } = await lower()
    await chmod(root, 0o711)
    await apply(root, [file('a', 'a')])
    assert.equal((await stat(root)).mode & 0o7777, 0o711)
    await apply(root, [dir('./', { mode: 0o755, mtime })])
    assert.equal((await stat(root)).mode & 0o7777, 0o755)
    assert.equal((await stat(root)).mtime.getTime(), mtime.getTime())
  })

  const refusals: Array<[string, (outside: string) => TarSpec[]]> = [
    ['a ../ path', () => [file('../x')]],
    ['a hard link to a file of the layers below', () => [hardlink('h', 'etc/passwd')]],
    ['a file through its own symlink', (outside) => [symlink('s', outside), file('s/victim', 'owned')]],
    ['a whiteout through its own symlink', (outside) => [symlink('s', outside), file('s/.wh.victim', '')]],
    ['a whiteout of ..', () => [file('etc/.wh...', '')]]
  ]
  for (const [name, entries] of refusals) {
    it(`refuses ${name}`, async () => {
      const { root, outside } = await lower()
      await assert.rejects(apply(root, entries(outside)), UnsafeLayerError)
      assert.equal(await readFile(join(outside, 'victim'), 'utf8'), 'safe')
      assert.equal(await readFile(join(root, 'etc/passwd'), 'utf8'), 'root:x:0:0')
    })
  }

  it('needs the directory of the layers below to exist', async () => {
    await assert.rejects(apply(join(base, 'missing'), [file('a')]), /no directory/)
  })
})
