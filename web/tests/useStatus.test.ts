import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { effectScope } from 'vue'
import { createApi } from '../src/composables/useApi'
import { useLimiter } from '../src/composables/useLimiter'
import { useStatus } from '../src/composables/useStatus'
import { T0, fakeFetch, makeRound, makeStatus } from './fixtures'

describe('useStatus and useLimiter', () => {
  beforeEach(() => vi.useFakeTimers())
  afterEach(() => vi.useRealTimers())

  it('polls the status every 5 s until its scope ends', async () => {
    const { fetch, calls } = fakeFetch(() => makeStatus(T0))
    const scope = effectScope()
    const { status } = scope.run(() => useStatus({ api: createApi({ baseUrl: 'http://d/', fetch }) }))!
    await vi.advanceTimersByTimeAsync(0)
    expect(status.value?.variants.production?.latest?.ts).toBe(T0 - 7)
    await vi.advanceTimersByTimeAsync(10_000)
    expect(calls).toHaveLength(3)
    scope.stop()
    await vi.advanceTimersByTimeAsync(20_000)
    expect(calls).toHaveLength(3)
  })

  it('takes newer points from the stream between polls, and keeps newer ones', async () => {
    vi.setSystemTime((T0 + 12) * 1000)
    const { fetch } = fakeFetch(() => makeStatus(T0))
    const scope = effectScope()
    const { status, apply } = scope.run(() => useStatus({ api: createApi({ baseUrl: 'http://d/', fetch }) }))!
    await vi.advanceTimersByTimeAsync(0)
    apply(makeRound(T0 + 5))
    expect(status.value?.variants.production).toMatchObject({ age_seconds: 2, stale: false })
    expect(status.value?.variants.production?.latest?.ts).toBe(T0 + 5)
    apply(makeRound(T0 - 20))
    expect(status.value?.variants.production?.latest?.ts).toBe(T0 + 5)
    scope.stop()
  })

  it('polls the limiter and keeps its answer, available or not', async () => {
    const { fetch, calls } = fakeFetch(() => ({ available: false, error: 'limiter unreachable' }))
    const scope = effectScope()
    const { limiter } = scope.run(() => useLimiter({ api: createApi({ baseUrl: 'http://d/', fetch }), intervalMs: 1000 }))!
    await vi.advanceTimersByTimeAsync(2500)
    expect(calls.map((c) => c.url.pathname)).toEqual(['/api/limiter', '/api/limiter', '/api/limiter'])
    expect(limiter.value).toEqual({ available: false, error: 'limiter unreachable' })
    scope.stop()
  })
})
