import { mount } from '@vue/test-utils'
import { describe, expect, it } from 'vitest'
import LimiterPanel from '../src/components/panels/LimiterPanel.vue'
import type { LimiterPool } from '../src/types'
import { T0 } from './fixtures'

function pool(overrides: Partial<LimiterPool>): LimiterPool {
  return {
    rate: 12, limited: true, ceiling: 12.5, hold: 12.25, concurrency_limit: 8, probing: false, paused: false,
    last_decision: 'hold', concurrency_decision: 'hold', tick: 1, updated_at: T0, replicas: 2, key: null, parked: null,
    ...overrides,
  }
}

describe('LimiterPanel', () => {
  it('lists each upstream key by alias, with its parking and why', () => {
    const pools = {
      'key-alpha': pool({ key: 'alpha', parked: { until: T0 + 3 * 3600 + 90, reason: 'its 5-hour quota is spent (Z.ai 1308)', since: T0 - 10 } }),
      'key-beta': pool({ key: 'beta', probing: true }),
      'key-gamma': pool({ key: 'gamma', parked: { until: null, reason: 'its account is in arrears (Z.ai 1113)', since: T0 - 10 } }),
    }
    const limiter = {
      available: true as const,
      state: { node: 'n', leader: true, degraded: false, tick_seconds: 0.25, pools, quota: null },
    }
    const wrapper = mount(LimiterPanel, { props: { series: {}, summaries: {}, range: '1h', limiter, now: T0 * 1000 } })
    const rows = wrapper.findAll('tbody tr').map((row) => row.findAll('th, td').map((cell) => cell.text()))
    expect(rows.map((cells) => cells.slice(0, 2))).toEqual([
      ['key-alpha', 'alpha'],
      ['key-beta', 'beta'],
      ['key-gamma', 'gamma'],
    ])
    expect(rows.map((cells) => cells[6])).toEqual(['parked for 3h 01m', 'probing', 'parked until lifted'])
    const parked = wrapper.findAll('td.parked')
    expect(parked.map((cell) => cell.attributes('title'))).toEqual([
      'its 5-hour quota is spent (Z.ai 1308)',
      'its account is in arrears (Z.ai 1113)',
    ])
  })
})
