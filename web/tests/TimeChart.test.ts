import { mount } from '@vue/test-utils'
import { describe, expect, it } from 'vitest'
import TimeChart from '../src/components/TimeChart.vue'
import { buildChart } from '../src/lib/chart'
import { formatLatency } from '../src/lib/format'
import { LATENCY_SPECS } from '../src/lib/panels'
import { LATENCY, T0, histogram, makeSeries } from './fixtures'

describe('TimeChart', () => {
  const series = { production: makeSeries('production', T0, 5, 10), canary: makeSeries('canary', T0, 5, 10) }

  it('draws a uPlot chart of every line, with a legend of figures and variants', () => {
    const wrapper = mount(TimeChart, { props: { data: buildChart(series, LATENCY_SPECS), label: 'latency' }, attachTo: document.body })
    expect(wrapper.find('.uplot').exists()).toBe(true)
    expect(wrapper.attributes('data-lines')).toBe('10')
    expect(wrapper.attributes('data-values')).toBe('100')
    const legend = wrapper.find('.time-chart__legend').text()
    for (const word of ['p50', 'p95', 'TTFB p95', 'production', 'canary']) expect(legend).toContain(word)
    wrapper.unmount()
  })

  it('reads each line over the whole range while the cursor is off the plot', () => {
    // canary's answers are slower: 1 + 1.5 × 5/10 at p95
    const slower = { ...series, canary: makeSeries('canary', T0, 5, 10, { latency_buckets: histogram(100, [0, 0.2, 0.6, 0.9, 1]) }) }
    const wrapper = mount(TimeChart, { props: { data: buildChart(slower, LATENCY_SPECS), label: 'latency', range: '1h', format: formatLatency } })
    const readout = wrapper.find('[data-testid="chart-readout"]')
    expect(readout.attributes('data-at')).toBe('range')
    expect(readout.find('.time-chart__time').text()).toBe('over 1h')
    const p95 = (variant: string) => readout.find(`[data-line="p95 · ${variant}"]`)
    expect(Number(p95('production').attributes('data-value'))).toBe(LATENCY.p95)
    expect(p95('production').text()).toBe('p95 969 ms')
    expect(Number(p95('canary').attributes('data-value'))).toBe(1.75)
    expect(p95('canary').text()).toBe('p95 1.75 s')
  })

  it('says so when the range has no data', () => {
    const wrapper = mount(TimeChart, { props: { data: buildChart({}, LATENCY_SPECS), label: 'latency' } })
    expect(wrapper.text()).toContain('No data in this range')
  })

  it('keeps its chart when new data has the same lines', async () => {
    const wrapper = mount(TimeChart, { props: { data: buildChart(series, LATENCY_SPECS), label: 'latency' }, attachTo: document.body })
    const plot = wrapper.find('.uplot').element
    await wrapper.setProps({ data: buildChart({ production: makeSeries('production', T0, 5, 11), canary: makeSeries('canary', T0, 5, 11) }, LATENCY_SPECS) })
    expect(wrapper.find('.uplot').element).toBe(plot)
    expect(wrapper.attributes('data-values')).toBe('110')
    await wrapper.setProps({ data: buildChart({ production: series.production }, LATENCY_SPECS) })
    expect(wrapper.find('.uplot').element).not.toBe(plot)
    wrapper.unmount()
  })
})
