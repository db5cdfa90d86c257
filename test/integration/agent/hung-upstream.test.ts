import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { removeAgentDir, startAgent, type TestAgent } from '../../harness/agent.ts'
import { type HungServer, startHungServer } from '../../harness/hung-server.ts'

// containerd 1.6 has no timeout on a mirror that accepts and never answers: the agent must
// turn an upstream that hangs into a fast error so the runtime falls back to the registry.
describe('an upstream that hangs', () => {
  let silent: HungServer
  let stalling: HungServer
  let agent: TestAgent

  before(async () => {
    silent = await startHungServer('accept-never-answer')
    stalling = await startHungServer('headers-then-stall')
    agent = await startAgent({
      registries: { [silent.host]: { url: silent.url }, [stalling.host]: { url: stalling.url } },
      config: {
        upstream: { connectTimeout: '1s', responseTimeout: '1500ms', bodyTimeout: '1500ms', retries: 1 }
      }
    })
  })
  after(async () => {
    await agent?.stop()
    if (agent) await removeAgentDir(agent)
    await silent?.stop()
    await stalling?.stop()
  })

  for (const mode of ['silent', 'stalling'] as const) {
    it(`answers a manifest request with 504 instead of hanging (${mode})`, async () => {
      const host = mode === 'silent' ? silent.host : stalling.host
      const started = performance.now()
      const res = await fetch(
        `http://${agent.mirror}/v2/app/manifests/latest?ns=${encodeURIComponent(host)}`,
        {
          signal: AbortSignal.timeout(30_000)
        }
      )
      const body = (await res.json()) as { errors: { code: string }[] }
      assert.ok(res.status >= 500, `status ${res.status}`)
      assert.ok(body.errors.length > 0)
      // Bounded by the configured timeouts and one retry, far below a runtime's patience.
      assert.ok(performance.now() - started < 15_000)
    })
  }

  it('answers a blob request with an error, and stays up', async () => {
    const digest = `sha256:${'4'.repeat(64)}`
    const res = await fetch(
      `http://${agent.mirror}/v2/app/blobs/${digest}?ns=${encodeURIComponent(stalling.host)}`,
      {
        signal: AbortSignal.timeout(30_000)
      }
    )
    assert.ok(res.status >= 500, `status ${res.status}`)
    await res.arrayBuffer()
    const status = await agent.status()
    assert.equal(status.store.completeBlobs, 0)
    assert.match(agent.logs(), /UPSTREAM_TIMEOUT/)
  })
})
