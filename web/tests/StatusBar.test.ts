import { mount } from '@vue/test-utils'
import { describe, expect, it } from 'vitest'
import StatusBar from '../src/components/StatusBar.vue'
import { headline } from '../src/lib/figures'
import { T0, makeSeries } from './fixtures'

const props = {
  state: 'open' as const,
  retries: 0,
  nextAttemptAt: null,
  lastUpdate: T0,
  lastEventId: String(T0 * 1000),
  freshness: { production: { ageSeconds: 3, stale: false, latestAt: T0 } },
  headlines: { production: headline(makeSeries('production', T0 - 60, 5, 12, { requests_total: 100 })) },
  range: '1h',
  now: (T0 + 3) * 1000,
}

describe('StatusBar', () => {
  it('shows the connection state, the last update and the headline figures of the range', () => {
    const wrapper = mount(StatusBar, { props })
    expect(wrapper.find('[data-testid="connection-state"]').text()).toBe('Live')
    expect(wrapper.find('[data-testid="last-update"]').text()).toContain('(3s ago)')
    const figures = wrapper.findAll('[data-figure]').map((f) => f.find('.figure__value').text())
    expect(figures).toEqual(['20', '969 ms', '1%', '9.6k', '$28.80', '24.5/s'])
    expect(wrapper.find('.headline__variant').text()).toBe('production 1h')
    expect(wrapper.find('[data-name="latencyP95"] .figure__label').text()).toBe('upstream p95')
    expect(wrapper.find('[data-testid="stale-warning"]').exists()).toBe(false)
  })

  it('warns of a variant whose data stopped', () => {
    const wrapper = mount(StatusBar, {
      props: { ...props, freshness: { ...props.freshness, canary: { ageSeconds: 95, stale: true, latestAt: T0 - 92 } } },
    })
    expect(wrapper.find('[data-testid="stale-warning"]').text()).toBe('⚠ canary: no new data for 1m 35s')
  })

  it('counts down to the next reconnect attempt', () => {
    const wrapper = mount(StatusBar, { props: { ...props, state: 'reconnecting', retries: 3, nextAttemptAt: props.now + 4000 } })
    const state = wrapper.find('[data-testid="connection-state"]')
    expect(state.attributes('data-state')).toBe('reconnecting')
    expect(state.text()).toBe('Reconnecting in 4s (attempt 3)')
  })
})
