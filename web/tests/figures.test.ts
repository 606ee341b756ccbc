import { describe, expect, it } from 'vitest'
import { compareHeadlines, headline, limiterMarkers, mergeMarkers, modelTable, quotaWindows, ratio429ByClass, windowTotals } from '../src/lib/figures'
import { formatCountdown, formatLatency, formatNumber, formatPercent, formatSigned, formatUsd } from '../src/lib/format'
import { freshness } from '../src/lib/status'
import { LATENCY, TTFB, T0, histogram, makePoint, makeSeries, makeStatus } from './fixtures'

describe('figures', () => {
  it('computes headline figures over a range', () => {
    const points = [makePoint(T0, { requests_total: 100, requests_5xx_total: 2 }), makePoint(T0 + 5, { requests_total: 300, requests_5xx_total: 2 })]
    const h = headline(points)
    expect(h.requestsPerSecond).toBe(40)
    expect(h.errorRatio).toBe(0.01)
    expect(h.latencyP95).toBe(LATENCY.p95)
    expect(h.ttfbP95).toBe(TTFB.p95)
    expect(h.refusals).toBe(0)
    expect(h.refusalWaitP95).toBeNull()
    expect(h.tokensPerSecond).toBe(400 * 480 / 10)
    expect(h.costPerHour).toBeCloseTo((400 * 0.0004 / 10) * 3600)
    expect(h.limiterRate).toBe(24.5)
  })

  it('takes the p95s of a range from the merged histograms, not a mean of the points\' p95s', () => {
    // 100 fast answers (half up to 0.1 s, all up to 0.25 s), then 300 slow ones (half up to
    // 1 s, all up to 2.5 s). Merged: 50, 100, 100, 250, 400; rank 380 of the p95 is 130 of
    // the 150 in (1, 2.5]: 1 + 1.5 × 130/150 = 2.3 s, where the points' p95s are 0.235 and 2.35.
    const fast = makePoint(T0, { requests_total: 100, latency_buckets: histogram(100, [0.5, 1, 1, 1, 1]), latency_p95: 0.235 })
    const slow = makePoint(T0 + 5, { requests_total: 300, latency_buckets: histogram(300, [0, 0, 0, 0.5, 1]), latency_p95: 2.35 })
    expect(headline([fast, slow]).latencyP95).toBeCloseTo(2.3, 12)
  })

  it('counts the proxy\'s refusals and their wait apart from the upstream latency', () => {
    // 40 refusals in 2 ms or less, 10 more up to 0.1 s: the refusal wait p95 is 0.0025 + 0.0975 × 7.5/10.
    const refusing = makePoint(T0, {
      refusals_total: 50,
      proxy_rate_limited_total: 50,
      refusal_wait_buckets: { count: 50, buckets: [[0.0025, 40], [0.1, 50]] },
    })
    const h = headline([refusing, makePoint(T0 + 5, { refusals_total: 2 })])
    expect(h.refusals).toBe(52)
    expect(h.refusalWaitP95).toBeCloseTo(0.0025 + 0.0975 * 0.75, 12)
    expect(h.latencyP95).toBe(LATENCY.p95)
  })

  it('has no figures for no points', () => {
    expect(headline([])).toEqual({
      requestsPerSecond: null,
      latencyP95: null,
      ttfbP95: null,
      errorRatio: null,
      upstream429Ratio: null,
      refusals: null,
      refusalWaitP95: null,
      tokensPerSecond: null,
      costPerHour: null,
      limiterRate: null,
    })
  })

  it('compares each variant with the baseline', () => {
    const rows = compareHeadlines(
      {
        production: headline(makeSeries('production', T0, 5, 12, { latency_buckets: histogram(100, [0.1, 0.5, 0.9, 1, 1]) })),
        canary: headline(makeSeries('canary', T0, 5, 12, { requests_total: 50, latency_buckets: histogram(50, [0, 0.2, 0.6, 0.9, 1]) })),
      },
      'production',
    )
    const rate = rows.find((r) => r.key === 'requestsPerSecond')!
    expect(rate.values).toEqual({ production: 20, canary: 10 })
    expect(rate.difference).toEqual({ canary: -10 })
    expect(rate.relative).toEqual({ canary: -0.5 })
    const p95 = rows.find((r) => r.key === 'latencyP95')!
    expect(p95.values).toEqual({ production: 0.75, canary: 1.75 })
    expect(p95.difference.canary).toBe(1)
    expect(p95.relative.canary).toBeCloseTo(4 / 3)
  })

  it('sums window totals and per-model figures', () => {
    const points = makeSeries('production', T0, 5, 4)
    expect(windowTotals(points)).toMatchObject({ requests: 400, tokensIn: 160_000, tokensCacheRead: 40_000, seconds: 20 })
    const rows = modelTable([points, makeSeries('canary', T0, 5, 2, { models: { 'glm-4.5-air': { requests: 1, tokens_in: 1, tokens_out: 1, tokens_cache_read: 0, tokens_cache_write: 0, tokens_reasoning: 0, cost_usd: 1 } } })])
    expect(rows.map((r) => [r.model, r.requests])).toEqual([
      ['glm-4.5-air', 2],
      ['glm-4.6', 400],
    ])
  })

  it('marks probes and back-offs where the limiter counted them, once per time', () => {
    const points = [makePoint(T0), makePoint(T0 + 5, { limiter_probes_total: 1 }), makePoint(T0 + 10, { limiter_decreases_total: 2 })]
    const production = limiterMarkers(points, 'production')
    expect(production.map((m) => [m.ts, m.kind])).toEqual([
      [T0 + 5, 'probe'],
      [T0 + 10, 'backoff'],
    ])
    const both = mergeMarkers([production, limiterMarkers(points, 'canary')])
    expect(both).toHaveLength(2)
    expect(both[1]!.label).toBe('back-off ×2 (production), back-off ×2 (canary)')
  })

  it('splits the upstream 429 ratio by class', () => {
    const r = ratio429ByClass(makePoint(T0, { requests_total: 97, retries_total: 3, upstream_429_frequency_total: 2, upstream_429_concurrency_total: 1 }))
    expect(r).toEqual({ frequency: 0.02, concurrency: 0.01, quota: 0, congestion: 0 })
  })

  it('takes quota windows from the limiter, else from the newest point', () => {
    const point = makePoint(T0)
    expect(quotaWindows(null, point)).toEqual([
      { name: '5h', used: 0.42, resetAt: T0 + 3600 },
      { name: 'weekly', used: 0.1, resetAt: T0 + 86400 },
    ])
    const limiter = {
      available: true as const,
      state: {
        node: 'n', leader: true, degraded: false, tick_seconds: 0.25, pools: {},
        quota: { windows: [{ name: 'five_hour', used_ratio: 0.5, remaining_ratio: 0.5, reset_at: T0 + 60 }], sample_age_seconds: 1, error: null, rate_cap: null },
      },
    }
    expect(quotaWindows(limiter, point)).toEqual([{ name: 'five_hour', used: 0.5, resetAt: T0 + 60 }])
  })

  it('ages the status with the client clock, and marks old data stale', () => {
    const status = makeStatus(T0, 2)
    const received = 1_000_000
    expect(freshness(status, received, received + 3000).production).toMatchObject({ ageSeconds: 5, stale: false })
    expect(freshness(status, received, received + 20_000).production).toMatchObject({ ageSeconds: 22, stale: true })
  })
})

describe('formats', () => {
  it.each([
    [formatNumber(1234), '1.23k'],
    [formatNumber(12_300_000), '12.3M'],
    [formatNumber(0.5), '0.5'],
    [formatNumber(999.7), '1000'],
    [formatNumber(null), '—'],
    [formatLatency(0.0123), '12.3 ms'],
    [formatLatency(1.5), '1.5 s'],
    [formatPercent(0.0123), '1.23%'],
    [formatPercent(1, 2), '100%'],
    [formatUsd(0.0042), '$0.0042'],
    [formatUsd(12.345), '$12.35'],
    [formatCountdown(3725), '1h 02m'],
    [formatCountdown(65), '1m 05s'],
    [formatCountdown(-1), 'now'],
    [formatSigned(-0.25, (v) => formatPercent(v)), '−25%'],
    [formatSigned(3, String), '+3'],
  ])('%s reads as %s', (got, expected) => {
    expect(got).toBe(expected)
  })
})
