import { describe, expect, it } from 'vitest'
import { effectScope, nextTick, ref } from 'vue'
import { createApi } from '../src/composables/useApi'
import { useMetrics } from '../src/composables/useMetrics'
import type { MetricsResponse, Range, VariantChoice } from '../src/types'
import { T0, fakeFetch, makeMetrics, makeRound } from './fixtures'

async function settle() {
  for (let i = 0; i < 5; i++) await new Promise((r) => setTimeout(r, 0))
}

function setup(answer: (url: URL) => MetricsResponse = () => makeMetrics()) {
  const { fetch, calls } = fakeFetch(answer)
  const api = createApi({ baseUrl: 'http://dash.test/', fetch })
  const range = ref<Range>('5m')
  const variant = ref<VariantChoice>('all')
  const scope = effectScope()
  const metrics = scope.run(() => useMetrics(range, variant, { api }))!
  return { metrics, calls, range, variant, scope }
}

describe('useMetrics', () => {
  it('fetches the range and variant at once', async () => {
    const { metrics, calls } = setup()
    await settle()
    expect(calls.map((c) => c.url.search)).toEqual(['?range=5m&variant=all'])
    expect(metrics.data.value?.series.production).toHaveLength(60)
  })

  it('fetches again when the range changes', async () => {
    const { calls, range } = setup()
    await settle()
    range.value = '6h'
    await nextTick()
    await settle()
    expect(calls.map((c) => c.url.searchParams.get('range'))).toEqual(['5m', '6h'])
  })

  it('fetches again when the variant changes; a comparison loads every variant', async () => {
    const { calls, variant } = setup()
    await settle()
    variant.value = 'canary'
    await nextTick()
    await settle()
    variant.value = 'compare'
    await nextTick()
    await settle()
    expect(calls.map((c) => c.url.searchParams.get('variant'))).toEqual(['all', 'canary', 'all'])
  })

  it('aborts a fetch that a newer one replaces', async () => {
    const { calls, range } = setup()
    range.value = '1h'
    await nextTick()
    await settle()
    expect(calls).toHaveLength(2)
    expect(calls[0]!.init!.signal!.aborted).toBe(true)
    expect(calls[1]!.init!.signal!.aborted).toBe(false)
  })

  it('appends live points without fetching, trimmed to the range', async () => {
    const { metrics, calls } = setup()
    await settle()
    const before = metrics.data.value!
    metrics.append(makeRound(T0))
    metrics.append(makeRound(T0 + 5))
    const after = metrics.data.value!
    expect(calls).toHaveLength(1)
    expect(after).not.toBe(before)
    const production = after.series.production!
    expect(production).toHaveLength(60)
    expect(production.at(-1)!.ts).toBe(T0 + 5)
    expect(production[0]!.ts).toBe(T0 - 290)
    expect(after.end).toBe(T0 + 10)
  })

  it('keeps live rounds that arrive while a fetch is in flight', async () => {
    const { metrics, range } = setup()
    await settle()
    range.value = '15m'
    await nextTick()
    metrics.append(makeRound(T0 + 5))
    await settle()
    expect(metrics.data.value!.series.production!.at(-1)!.ts).toBe(T0 + 5)
  })

  it('stops following the range when closed', async () => {
    const { metrics, calls, range, scope } = setup()
    await settle()
    scope.stop()
    range.value = '24h'
    await nextTick()
    await settle()
    expect(calls).toHaveLength(1)
    expect(metrics.loading.value).toBe(false)
  })

  it('reports an error of the API', async () => {
    const { fetch } = fakeFetch(() => new Response(JSON.stringify({ detail: 'the rollup database cannot be read' }), { status: 503 }))
    const api = createApi({ baseUrl: 'http://dash.test/', fetch })
    const scope = effectScope()
    const metrics = scope.run(() => useMetrics('1h', 'all', { api }))!
    await settle()
    expect(metrics.error.value?.message).toContain('the rollup database cannot be read')
    expect(metrics.data.value).toBeNull()
  })
})
