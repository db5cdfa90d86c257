import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { execFileRunner } from '../../../src/materialize/command-runner.ts'

describe('execFileRunner', () => {
  it("resolves with the program's standard output", async () => {
    assert.deepEqual(await execFileRunner.run('printf', ['%s\\n', 'a b', '$HOME']), {
      stdout: 'a b\n$HOME\n'
    })
  })

  it('closes stdin, so a program that reads it does not wait', async () => {
    assert.deepEqual(await execFileRunner.run('cat', []), { stdout: '' })
  })

  it("rejects with the program's stderr", async () => {
    await assert.rejects(execFileRunner.run('sh', ['-c', 'echo nope >&2; exit 3']), /sh failed: nope/)
  })
})
