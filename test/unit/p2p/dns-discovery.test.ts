import assert from 'node:assert/strict'
import { createSocket, type Socket } from 'node:dgram'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { pino } from 'pino'
import type { AbortOptions } from '../../../src/interface/common.ts'
import {
  DnsDiscovery,
  type DnsDiscoveryNode,
  type DnsResolver,
  SystemDnsResolver
} from '../../../src/p2p/dns-discovery.ts'

const logger = pino({ level: 'silent' })
const SELF = '/ip4/10.0.0.1/tcp/4001'

/** A node that records dials; addresses in `hosts` answer with that peer id, others fail. */
class FakeNode implements DnsDiscoveryNode {
  readonly dials: string[] = []
  readonly connected = new Set<string>()
  constructor(readonly hosts: Record<string, string>) {}
  addresses(): string[] {
    return [`${SELF}/p2p/self`, '/ip4/127.0.0.1/tcp/4001/p2p/self']
  }
  peers(): string[] {
    return [...this.connected]
  }
  async dial(address: string, options: AbortOptions): Promise<string> {
    this.dials.push(address)
    options.signal?.throwIfAborted()
    const [base, id] = address.split('/p2p/')
    const peer = this.hosts[base!]
    if (peer === undefined || (id !== undefined && id !== peer)) throw new Error(`cannot reach ${address}`)
    this.connected.add(peer)
    return peer
  }
}

/** Answers from a queue of results; an Error entry rejects. The last entry repeats. */
class QueueResolver implements DnsResolver {
  calls = 0
  constructor(readonly answers: Array<string[] | Error>) {}
  async resolve(name: string): Promise<string[]> {
    assert.equal(name, 'shoal.default.svc.cluster.local')
    const a = this.answers[Math.min(this.calls++, this.answers.length - 1)]!
    if (a instanceof Error) throw a
    return a
  }
}

const NAME = 'shoal.default.svc.cluster.local'

async function waitFor(what: string, check: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!check()) {
    if (performance.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

describe('DnsDiscovery', () => {
  it('dials every resolved address on the port, IPv4 and IPv6, and skips its own', async () => {
    const node = new FakeNode({ '/ip4/10.0.0.2/tcp/4001': 'B', '/ip6/fd00::3/tcp/4001': 'C' })
    const resolver = new QueueResolver([['10.0.0.1', '10.0.0.2', 'fd00::3', '10.0.0.2']])
    const d = new DnsDiscovery({ node, logger, resolver }, { name: NAME, port: 4001 })
    const round = await d.discover()
    assert.deepEqual(round.addresses, [SELF, '/ip4/10.0.0.2/tcp/4001', '/ip6/fd00::3/tcp/4001'])
    assert.deepEqual(node.dials.sort(), ['/ip4/10.0.0.2/tcp/4001', '/ip6/fd00::3/tcp/4001'])
    assert.deepEqual(round.connected.sort(), ['B', 'C'])
  })

  it('skips connected peers later, redials a lost one by its id, forgets an id that moved', async () => {
    const hosts: Record<string, string> = { '/ip4/10.0.0.2/tcp/4001': 'B' }
    const node = new FakeNode(hosts)
    const d = new DnsDiscovery(
      { node, logger, resolver: new QueueResolver([['10.0.0.2']]) },
      { name: NAME, port: 4001 }
    )
    await d.discover()
    assert.deepEqual(node.dials, ['/ip4/10.0.0.2/tcp/4001'])
    // Still connected: no dial at all.
    assert.deepEqual((await d.discover()).connected, [])
    assert.equal(node.dials.length, 1)
    // Connection lost: redialled with the learned peer id.
    node.connected.clear()
    assert.deepEqual((await d.discover()).connected, ['B'])
    assert.equal(node.dials[1], '/ip4/10.0.0.2/tcp/4001/p2p/B')
    // The pod IP now belongs to another node: the dial by id fails, the next round dials anew.
    node.connected.clear()
    hosts['/ip4/10.0.0.2/tcp/4001'] = 'D'
    assert.deepEqual((await d.discover()).connected, [])
    assert.deepEqual((await d.discover()).connected, ['D'])
    assert.deepEqual(node.dials.slice(2), ['/ip4/10.0.0.2/tcp/4001/p2p/B', '/ip4/10.0.0.2/tcp/4001'])
  })

  it('asks the node who already listens on an address before a first dial', async () => {
    const node = new FakeNode({ '/ip4/10.0.0.2/tcp/4001': 'B' })
    node.connected.add('B')
    const asked: string[] = []
    const withLookup: DnsDiscoveryNode = Object.assign(Object.create(node), {
      connectedPeerAt: async (address: string) => {
        asked.push(address)
        return 'B'
      }
    })
    const d = new DnsDiscovery(
      { node: withLookup, logger, resolver: new QueueResolver([['10.0.0.2']]) },
      { name: NAME, port: 4001 }
    )
    assert.deepEqual((await d.discover()).connected, [])
    assert.deepEqual(asked, ['/ip4/10.0.0.2/tcp/4001'])
    assert.deepEqual(node.dials, [])
  })

  it('survives resolver errors and failed dials in its loop, and stop() clears its timer', async () => {
    const node = new FakeNode({ '/ip4/10.0.0.2/tcp/4001': 'B' })
    const resolver = new QueueResolver([
      new Error('SERVFAIL'),
      Object.assign(new Error('queryA ENOTFOUND'), { code: 'ENOTFOUND' }),
      ['10.0.0.9', '10.0.0.2']
    ])
    const d = new DnsDiscovery({ node, logger, resolver }, { name: NAME, port: 4001, intervalMs: 10 })
    const timersBefore = countTimeouts()
    await d.start()
    await d.start()
    await waitFor('a dial after two failed look-ups', () => node.connected.has('B'))
    assert.ok(resolver.calls >= 3)
    assert.ok(node.dials.includes('/ip4/10.0.0.9/tcp/4001'), 'the unreachable address was tried too')
    assert.ok(countTimeouts() > timersBefore, 'the loop waits on a timer')
    await d.stop()
    await d.stop()
    const calls = resolver.calls
    assert.equal(countTimeouts(), timersBefore)
    await sleep(50)
    assert.equal(resolver.calls, calls, 'no look-up after stop()')
    // Restartable.
    await d.start()
    await waitFor('a look-up after a restart', () => resolver.calls > calls)
    await d.stop()
  })

  it('stop() aborts a round stuck in a dial', async () => {
    let aborted = false
    const node: DnsDiscoveryNode = {
      addresses: () => [],
      peers: () => [],
      dial: (_address, options) =>
        new Promise((_resolve, reject) => {
          options.signal?.addEventListener('abort', () => {
            aborted = true
            reject(options.signal!.reason)
          })
        })
    }
    const resolver = new QueueResolver([['10.0.0.2']])
    const d = new DnsDiscovery({ node, logger, resolver }, { name: NAME, port: 4001, dialTimeoutMs: 60_000 })
    await d.start()
    await waitFor('the look-up', () => resolver.calls === 1)
    await d.stop()
    assert.ok(aborted)
  })
})

describe('SystemDnsResolver against a local name server', () => {
  let server: Socket
  let servers: string[]
  const zone: Record<string, { A?: string[]; AAAA?: string[] }> = {
    'both.test': { A: ['10.0.0.2', '10.0.0.3'], AAAA: ['fd00::3'] },
    'v4only.test': { A: ['10.0.0.4'] },
    'v6only.test': { AAAA: ['fd00::5'] }
  }

  before(async () => {
    server = createSocket('udp4')
    server.on('message', (query, peer) => server.send(answer(query, zone), peer.port, peer.address))
    await new Promise<void>((resolve) => server.bind(0, '127.0.0.1', resolve))
    servers = [`127.0.0.1:${server.address().port}`]
  })
  after(() => server.close())

  it('returns A and AAAA records, either family alone, and rejects an unknown name', async () => {
    const r = new SystemDnsResolver({ servers })
    assert.deepEqual((await r.resolve('both.test')).sort(), ['10.0.0.2', '10.0.0.3', 'fd00::3'])
    assert.deepEqual(await r.resolve('v4only.test'), ['10.0.0.4'])
    assert.deepEqual(await r.resolve('v6only.test'), ['fd00::5'])
    await assert.rejects(r.resolve('nobody.test'), { code: 'ENOTFOUND' })
    const aborted = new AbortController()
    aborted.abort()
    await assert.rejects(r.resolve('both.test', { signal: aborted.signal }))
  })

  it('feeds DnsDiscovery', async () => {
    const node = new FakeNode({ '/ip4/10.0.0.4/tcp/4001': 'E' })
    const resolver = new SystemDnsResolver({ servers })
    const d = new DnsDiscovery({ node, logger, resolver }, { name: 'v4only.test', port: 4001 })
    assert.deepEqual((await d.discover()).connected, ['E'])
  })
})

/** A DNS answer to `query` from `zone` (NXDOMAIN for unknown names, no records for a missing family). */
function answer(query: Buffer, zone: Record<string, { A?: string[]; AAAA?: string[] }>): Buffer {
  const labels: string[] = []
  let i = 12
  while (query[i] !== 0) {
    const len = query[i]!
    labels.push(query.subarray(i + 1, i + 1 + len).toString('latin1'))
    i += len + 1
  }
  const questionEnd = i + 5
  const qtype = query.readUInt16BE(i + 1)
  const entry = zone[labels.join('.').toLowerCase()]
  const records = entry === undefined ? [] : ((qtype === 1 ? entry.A : qtype === 28 ? entry.AAAA : []) ?? [])
  const rdata = records.map((ip) =>
    qtype === 1 ? Buffer.from(ip.split('.').map(Number)) : Buffer.from(expandIPv6(ip), 'hex')
  )
  const header = Buffer.alloc(12)
  query.copy(header, 0, 0, 2)
  header.writeUInt16BE(entry === undefined ? 0x8183 : 0x8180, 2) // response, RD, RA, NXDOMAIN or NOERROR
  header.writeUInt16BE(1, 4)
  header.writeUInt16BE(rdata.length, 6)
  const answers = rdata.map((data) => {
    const rr = Buffer.alloc(12)
    rr.writeUInt16BE(0xc00c, 0) // the name: a pointer to the question's
    rr.writeUInt16BE(qtype, 2)
    rr.writeUInt16BE(1, 4)
    rr.writeUInt32BE(5, 6)
    rr.writeUInt16BE(data.length, 10)
    return Buffer.concat([rr, data])
  })
  return Buffer.concat([header, query.subarray(12, questionEnd), ...answers])
}

function expandIPv6(ip: string): string {
  const [head, tail] = ip.split('::') as [string, string?]
  const h = head ? head.split(':') : []
  const t = tail ? tail.split(':') : []
  const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t]
  return groups.map((g) => g.padStart(4, '0')).join('')
}

function countTimeouts(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
}
