import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { abortable } from '../../../src/materialize/abortable.ts'

describe('abortable', () => {
  it('passes the work through when there is no signal or it never aborts', async () => {
    assert.equal(await abortable(Promise.resolve(1), undefined), 1)
    assert.equal(await abortable(Promise.resolve(2), new AbortController().signal), 2)
    await assert.rejects(abortable(Promise.reject(new Error('failed')), new AbortController().signal), {
      message: 'failed'
    })
  })

  it('rejects with ABORTED at once for an aborted signal, and when the signal aborts mid-wait', async () => {
    const never = new Promise<never>(() => {})
    await assert.rejects(abortable(never, AbortSignal.abort()), { code: 'ABORTED' })
    const controller = new AbortController()
    const waiting = abortable(never, controller.signal)
    controller.abort()
    await assert.rejects(waiting, { code: 'ABORTED' })
  })
})
