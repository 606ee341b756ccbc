import { mount } from '@vue/test-utils'
import { describe, expect, it } from 'vitest'
import TimeChart from '../src/components/TimeChart.vue'
import { buildChart } from '../src/lib/chart'
import { LATENCY_SPECS } from '../src/lib/panels'
import { T0, makeSeries } from './fixtures'

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
