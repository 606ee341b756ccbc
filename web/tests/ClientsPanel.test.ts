import { mount } from '@vue/test-utils'
import { describe, expect, it } from 'vitest'
import ClientsPanel from '../src/components/panels/ClientsPanel.vue'
import LimiterPanel from '../src/components/panels/LimiterPanel.vue'
import { clientTable } from '../src/lib/figures'
import { quantile } from '../src/lib/quantile'
import { summarize } from '../src/lib/series'
import type { LimiterPool } from '../src/types'
import { T0, makeClient, makePoint } from './fixtures'

const IDE_WAITS = [0.004, 0.02, 0.03, 0.3, 0.04]

function summaries() {
  // Two rounds of production and one of canary; ide on both, ci (batch) on production.
  const production = [
    makePoint(T0, { clients: { ide: makeClient(IDE_WAITS.slice(0, 2)), ci: makeClient([2, 4], { client_budget_rpm: 3 }, 'batch') } }),
    makePoint(T0 + 5, { clients: { ide: makeClient(IDE_WAITS.slice(2)) } }),
  ]
  const canary = [makePoint(T0, { variant: 'canary', clients: { ide: makeClient([0.02]) } })]
  return { production: summarize(production), canary: summarize(canary) }
}

describe('clientTable', () => {
  it('sums each client over the variants: totals, admitted rates, refusals by reason, the merged wait', () => {
    const [ide, ci] = clientTable(summaries())
    expect(ide!.client).toBe('ide')
    expect(ide!.requests).toBe(6)
    // production: 5 admitted over 10 s; canary: 1 over 5 s.
    expect(ide!.admittedPerSecond).toBeCloseTo(5 / 10 + 1 / 5)
    expect(ide!.classes).toEqual(['interactive'])
    expect(ide!.tokensIn).toBe(600)
    const bounds = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
    const waits = [...IDE_WAITS, 0.02]
    const truth = [...bounds.map((b) => [b, waits.filter((w) => w <= b).length] as const), [Infinity, waits.length] as const]
    expect(ide!.waitP95).toBeCloseTo(quantile(truth, 0.95)!)
    expect(ci!.classes).toEqual(['batch'])
    expect([ci!.refused, ci!.refusedBy]).toEqual([3, [['client_budget_rpm', 3]]])
  })
})

describe('ClientsPanel', () => {
  it('shows a row per client with its class, admitted rate, refusals, wait and tokens', () => {
    const wrapper = mount(ClientsPanel, { props: { summaries: summaries(), range: '1h' } })
    const rows = wrapper.findAll('tbody tr').map((row) => row.findAll('th, td').map((cell) => cell.text()))
    expect(rows.map((cells) => cells.slice(0, 3))).toEqual([
      ['ide', 'interactive', '0.7'],
      ['ci', 'batch', '0.2'],
    ])
    expect(rows[1]![3]).toBe('3 (client_budget_rpm)')
  })

  it('says so in one line when no client key is configured', () => {
    const anonymous = { production: summarize([makePoint(T0, { clients: { anonymous: makeClient([0.01]) } })]) }
    const wrapper = mount(ClientsPanel, { props: { summaries: anonymous, range: '1h' } })
    expect(wrapper.find('table').exists()).toBe(false)
    expect(wrapper.get('[data-testid="clients-empty"]').text()).toContain('No client keys configured')
  })
})

describe('LimiterPanel flows', () => {
  it("lists each pool's clients now: class, weight, leases held, requests waiting", () => {
    const base: LimiterPool = {
      rate: 12, limited: true, ceiling: 12.5, hold: 12.25, concurrency_limit: 2, probing: false, paused: false,
      last_decision: 'hold', concurrency_decision: 'hold', tick: 1, updated_at: T0, replicas: 1, key: 'alpha', parked: null,
    }
    const pools = {
      'key-alpha': {
        ...base,
        clients: [
          { client: 'ide', class: 'interactive', weight: 2, held: 2, waiting: 0 },
          { client: 'ci', class: 'batch', weight: 1, held: 0, waiting: 3 },
        ],
      },
    }
    const limiter = { available: true as const, state: { node: 'n', leader: true, degraded: false, tick_seconds: 0.25, pools, quota: null } }
    const wrapper = mount(LimiterPanel, { props: { series: {}, summaries: {}, range: '1h', limiter, now: T0 * 1000 } })
    const rows = wrapper.get('[data-testid="limiter-flows"]').findAll('tbody tr').map((row) => row.findAll('th, td').map((c) => c.text()))
    expect(rows).toEqual([
      ['key-alpha', 'ide', 'interactive', '2', '2', '0'],
      ['key-alpha', 'ci', 'batch', '1', '0', '3'],
    ])
  })
})
