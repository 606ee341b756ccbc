import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import App from '../src/App.vue'
import { DEFAULT_CONFIG } from '../src/composables/useConfig'
import { LATENCY, T0, FakeEventSource, fakeFetch, histogram, makeMetrics, makePoint, makeRound, makeStatus } from './fixtures'

function answer(url: URL): unknown {
  switch (url.pathname) {
    case '/api/config':
      return DEFAULT_CONFIG
    case '/api/metrics': {
      const variant = url.searchParams.get('variant') ?? 'all'
      const data = makeMetrics({ range: (url.searchParams.get('range') ?? '1h') as never, variant })
      if (variant !== 'all') data.series = { [variant]: data.series[variant]! }
      return data
    }
    case '/api/status':
      return makeStatus(T0)
    case '/api/limiter':
      return { available: false, error: 'not configured' }
  }
  return new Response('{"detail":"no"}', { status: 404 })
}

describe('the dashboard', () => {
  let calls: ReturnType<typeof fakeFetch>['calls']

  beforeEach(() => {
    FakeEventSource.reset()
    const fake = fakeFetch(answer)
    calls = fake.calls
    vi.stubGlobal('fetch', fake.fetch)
    vi.stubGlobal('EventSource', FakeEventSource)
    window.history.replaceState(null, '', '/?token=t0ken')
    localStorage.clear()
  })
  afterEach(() => vi.unstubAllGlobals())

  async function mounted() {
    const wrapper = mount(App, { attachTo: document.body })
    await flushPromises()
    await flushPromises()
    return wrapper
  }

  it('shows every panel with data and numbers in the status bar', async () => {
    const wrapper = await mounted()
    for (const name of ['requests', 'latency', 'tokens', 'cost', 'concurrency', 'errors', 'limiter']) {
      const panel = wrapper.find(`[data-testid="panel-${name}"]`)
      expect(panel.exists(), name).toBe(true)
      for (const chart of panel.findAll('[data-testid="time-chart"]')) {
        expect(Number(chart.attributes('data-values')), name).toBeGreaterThan(0)
      }
    }
    const figures = wrapper.findAll('[data-testid="headline"] [data-figure]')
    expect(figures.length).toBeGreaterThanOrEqual(12)
    for (const f of figures) expect(Number.isFinite(Number(f.attributes('data-value')))).toBe(true)
    expect(wrapper.find('[data-testid="model-table"]').text()).toContain('glm-4.6')
    expect(wrapper.findAll('[data-testid="quota-reset"]')).toHaveLength(2)
    wrapper.unmount()
  })

  it('sends the page token with every request and on the stream', async () => {
    const wrapper = await mounted()
    expect(calls.length).toBeGreaterThanOrEqual(4)
    for (const call of calls) expect((call.init!.headers as Record<string, string>).Authorization).toBe('Bearer t0ken')
    expect(new URL(FakeEventSource.last.url).searchParams.get('token')).toBe('t0ken')
    wrapper.unmount()
  })

  it('fetches again on a range change and keeps it in the URL', async () => {
    const wrapper = await mounted()
    await wrapper.find('[data-testid="select-range"] [data-value="6h"]').trigger('click')
    await flushPromises()
    const ranges = calls.filter((c) => c.url.pathname === '/api/metrics').map((c) => c.url.searchParams.get('range'))
    expect(ranges).toEqual(['1h', '6h'])
    expect(new URL(window.location.href).searchParams.get('range')).toBe('6h')
    expect(new URL(window.location.href).searchParams.get('token')).toBe('t0ken')
    wrapper.unmount()
  })

  it('compares the variants side by side', async () => {
    const wrapper = await mounted()
    expect(wrapper.find('[data-testid="comparison-table"]').exists()).toBe(false)
    await wrapper.find('[data-testid="select-variant"] [data-value="compare"]').trigger('click')
    await flushPromises()
    const table = wrapper.find('[data-testid="comparison-table"]')
    expect(table.exists()).toBe(true)
    expect(table.find('tr[data-key="requestsPerSecond"] [data-diff]').text()).toBe('−18')
    wrapper.unmount()
  })

  it('appends live snapshots and shows the connection state', async () => {
    const wrapper = await mounted()
    const state = () => wrapper.find('[data-testid="connection-state"]').attributes('data-state')
    expect(state()).toBe('connecting')
    FakeEventSource.last.open()
    await flushPromises()
    expect(state()).toBe('open')
    const metricsCalls = calls.filter((c) => c.url.pathname === '/api/metrics').length
    FakeEventSource.last.snapshot(makeRound(T0 + 60))
    await flushPromises()
    const update = wrapper.find('[data-testid="last-update"]')
    expect(Number(update.attributes('data-ts'))).toBe(T0 + 65)
    expect(update.attributes('data-event-id')).toBe(String((T0 + 60) * 1000))
    expect(calls.filter((c) => c.url.pathname === '/api/metrics')).toHaveLength(metricsCalls)
    FakeEventSource.last.fail()
    await flushPromises()
    expect(state()).toBe('reconnecting')
    expect(wrapper.find('[data-testid="connection-state"]').text()).toMatch(/Reconnecting in \ds \(attempt 1\)/)
    wrapper.unmount()
  })

  it('shows one p95 for one range: in the status bar, the latency panel and the chart', async () => {
    const wrapper = await mounted()
    const shown = () => {
      const status = wrapper.find('[data-testid="headline"] .headline[data-variant="production"] [data-name="latencyP95"]')
      const panel = wrapper.find('[data-testid="panel-latency"] [data-figure][data-name="latencyP95"]')
      const chart = wrapper.find('[data-testid="panel-latency"] [data-testid="chart-readout"] [data-line="p95 · production"]')
      return [status, panel, chart].map((e) => Number(e.attributes('data-value')))
    }
    expect(shown()).toEqual([LATENCY.p95, LATENCY.p95, LATENCY.p95])

    // A live round of slow answers moves the range's p95, everywhere alike.
    FakeEventSource.last.open()
    const slow = makePoint(T0, { variant: 'production', requests_total: 6000, latency_buckets: histogram(6000, [0, 0, 0, 0.5, 1]) })
    FakeEventSource.last.snapshot({ ts: T0, variants: { production: slow } })
    await flushPromises()
    const [status, ...others] = shown()
    expect(status).toBeGreaterThan(1)
    expect(others).toEqual([status, status])
    wrapper.unmount()
  })

  it('switches between light and dark', async () => {
    const wrapper = await mounted()
    const before = document.documentElement.dataset.theme
    await wrapper.find('[data-testid="theme-toggle"]').trigger('click')
    expect(document.documentElement.dataset.theme).not.toBe(before)
    expect(localStorage.getItem('zai-proxy.theme')).toBe(document.documentElement.dataset.theme)
    wrapper.unmount()
  })
})
