import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { parseThinDelta, parseThinDump, parseThinXml } from '../../../src/materialize/thin-xml.ts'

/** What thin_delta 0.9.0 printed in the UML guest for a snapshot with a 3 MiB file written. */
const TERSE = `<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="0">
  <diff left="1" right="2">
    <different begin="0" length="1"/>
    <same begin="1" length="3"/>
    <different begin="4" length="1"/>
    <right_only begin="144" length="17"/>
    <left_only begin="300" length="2"/>
    <same begin="4095" length="1"/>
  </diff>
</superblock>
`

const VERBOSE = `<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="0">
  <diff left="1" right="2">
    <different>
      <range begin="0" left_data_begin="132" right_data_begin="144" length="1"/>
    </different>
    <same>
      <range begin="1" data_begin="133" length="3"/>
    </same>
    <right_only>
      <range begin="144" data_begin="200" length="17"/>
    </right_only>
  </diff>
</superblock>
`

const DUMP = `<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="62016">
  <device dev_id="1" mapped_blocks="5" transaction="0" creation_time="0" snap_time="0">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
    <single_mapping origin_block="128" data_block="4" time="0"/>
  </device>
</superblock>
`

describe('thin tools XML', () => {
  it('reads thin_delta, terse and verbose, keeping only what changed', () => {
    assert.deepEqual(parseThinDelta(TERSE), {
      dataBlockSize: 128,
      changed: [
        { block: 0, count: 1 },
        { block: 4, count: 1 },
        { block: 144, count: 17 },
        { block: 300, count: 2 }
      ]
    })
    assert.deepEqual(parseThinDelta(VERBOSE), {
      dataBlockSize: 128,
      changed: [
        { block: 0, count: 1 },
        { block: 144, count: 17 }
      ]
    })
  })

  it('reads the mapped blocks of one device from thin_dump', () => {
    assert.deepEqual(parseThinDump(DUMP), {
      dataBlockSize: 128,
      changed: [
        { block: 0, count: 4 },
        { block: 128, count: 1 }
      ]
    })
  })

  it('refuses truncated, unbalanced or unexpected output instead of reading it as no change', () => {
    assert.throws(() => parseThinDelta(TERSE.slice(0, TERSE.indexOf('</diff>'))), /ends inside <diff>/)
    assert.throws(() => parseThinDelta(TERSE.replace('length="17"', 'length="x"')), /no integer length/)
    assert.throws(() => parseThinDelta('<superblock data_block_size="128"></superblock>'), /no <diff>/)
    assert.throws(() => parseThinDelta('thin_delta: no such device'), /unexpected XML at offset 0/)
    assert.throws(() => parseThinXml('<a><b></a></b>'), /<\/a> closes nothing open/)
    assert.throws(() => parseThinXml('<a x="1">text</a>'), /unexpected XML/)
    assert.throws(() => parseThinDump('<device dev_id="1"></device>'), /no <superblock>/)
    assert.deepEqual(parseThinXml(' <a  x = "1"  y="" /> '), [
      { name: 'a', attrs: { x: '1', y: '' }, kind: 'empty' }
    ])
  })
})
