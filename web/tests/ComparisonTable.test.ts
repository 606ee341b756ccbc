import { mount } from '@vue/test-utils'
import { describe, expect, it } from 'vitest'
import ComparisonTable from '../src/components/ComparisonTable.vue'
import { headline } from '../src/lib/figures'
import { T0, histogram, makeSeries } from './fixtures'

describe('ComparisonTable', () => {
  // p95s from the histograms: production 0.5 + 0.5 × 5/10, canary 1 + 1.5 × 5/10
  const headlines = {
    canary: headline(makeSeries('canary', T0, 5, 12, { requests_total: 50, latency_buckets: histogram(50, [0, 0.2, 0.6, 0.9, 1]), requests_5xx_total: 5 })),
    production: headline(makeSeries('production', T0, 5, 12, { latency_buckets: histogram(100, [0.1, 0.5, 0.9, 1, 1]) })),
  }

  it('puts the production baseline first and the difference of the other variant', () => {
    const wrapper = mount(ComparisonTable, { props: { headlines } })
    const head = wrapper.findAll('thead th').map((th) => th.text())
    expect(head).toEqual(['Figure', 'production', 'canary', 'Δ', 'Δ %'])
    const rate = wrapper.find('tr[data-key="requestsPerSecond"]')
    expect(rate.findAll('td').map((td) => td.text())).toEqual(['20', '10', '−10', '−50%'])
    expect(Number(rate.find('[data-diff]').attributes('data-value'))).toBe(-10)
  })

  it('marks a worse latency and error ratio as bad', () => {
    const wrapper = mount(ComparisonTable, { props: { headlines } })
    const p95 = wrapper.find('tr[data-key="latencyP95"]')
    expect(p95.find('td').text()).toBe('750 ms')
    expect(p95.find('[data-diff]').text()).toBe('+1 s')
    expect(p95.find('[data-relative]').text()).toBe('+133%')
    expect(p95.find('[data-diff]').classes()).toContain('bad')
    const errors = wrapper.find('tr[data-key="errorRatio"]')
    expect(errors.find('[data-diff]').classes()).toContain('bad')
    // more requests is not worse: no tone
    expect(wrapper.find('tr[data-key="requestsPerSecond"] [data-diff]').classes()).not.toContain('bad')
  })
})
