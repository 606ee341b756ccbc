import { describe, expect, it } from 'vitest'
import { addPoint, appendSnapshot, coveredSeconds, mergePoints, summarize, trimToRange } from '../src/lib/series'
import { LATENCY, T0, histogram, makeMetrics, makePoint, makeRound, makeSeries } from './fixtures'

describe('series maths', () => {
  it('appends a live point to a series of the same step', () => {
    const points = makeSeries('production', T0 - 15, 5, 3)
    const grown = addPoint(points, makePoint(T0), 5)
    expect(grown.map((p) => p.ts)).toEqual([T0 - 15, T0 - 10, T0 - 5, T0])
    expect(points).toHaveLength(3) // not changed in place
  })

  it('replaces a point with the same time, and ignores one older than the last', () => {
    const points = makeSeries('production', T0 - 10, 5, 3)
    const replaced = addPoint(points, makePoint(T0, { requests_total: 7 }), 5)
    expect(replaced).toHaveLength(3)
    expect(replaced.at(-1)!.requests_total).toBe(7)
    expect(addPoint(points, makePoint(T0 - 10), 5)).toBe(points)
  })

  it('merges live points into the coarse bucket that holds them', () => {
    const bucket = makePoint(T0, { seconds: 15, requests_total: 300, requests_per_s: 300 / 15 }) // 15 s bucket
    let points = [bucket]
    points = addPoint(points, makePoint(T0 + 15, { requests_total: 50 }), 15) // a new bucket
    points = addPoint(points, makePoint(T0 + 20, { requests_total: 100 }), 15) // same bucket
    expect(points.map((p) => [p.ts, p.seconds, p.requests_total])).toEqual([
      [T0, 15, 300],
      [T0 + 15, 15, 150],
    ])
    // rates per covered second: 150 requests over the 10 s seen so far
    expect(points[1]!.requests_per_s).toBe(15)
    expect(coveredSeconds(points[1]!)).toBe(10)
  })

  it('skips a live point that the fetched buckets already counted', () => {
    const points = [makePoint(T0, { seconds: 60 })]
    expect(addPoint(points, makePoint(T0 + 10), 60, T0 + 30)).toBe(points)
  })

  it('merges totals by sum, gauges by covered time, maxima by max', () => {
    const a = makePoint(T0, { requests_total: 100, in_flight: 10, in_flight_max: 20, limiter_rate: 20, refusals_total: 4 })
    const b = makePoint(T0 + 5, { requests_total: 300, in_flight: 30, in_flight_max: 25, limiter_rate: null, requests_5xx_total: 30 })
    const m = mergePoints([a, b], T0, 60)
    expect(m.requests_total).toBe(400)
    expect(m.requests_5xx_total).toBe(31)
    expect(m.error_ratio).toBeCloseTo(31 / 400)
    expect(m.requests_per_s).toBe(40)
    expect(m.in_flight).toBe(20)
    expect(m.in_flight_max).toBe(25)
    expect(m.limiter_rate).toBe(20)
    expect(m.refusals_total).toBe(4)
    expect(m.models['glm-4.6']!.requests).toBe(400)
    expect(m.seconds).toBe(60)
  })

  it('merges the histograms and reads the percentiles from the sum', () => {
    // Cumulative 50, 100, 100, 250, 400 up to 0.1, 0.25, 0.5, 1, 2.5 s: p50's rank 200 is
    // 100 of the 150 in (0.5, 1]; p95's rank 380 is 130 of the 150 in (1, 2.5].
    const fast = makePoint(T0, { requests_total: 100, latency_buckets: histogram(100, [0.5, 1, 1, 1, 1]), latency_p95: 0.235 })
    const slow = makePoint(T0 + 5, { requests_total: 300, latency_buckets: histogram(300, [0, 0, 0, 0.5, 1]), latency_p95: 2.35 })
    const m = mergePoints([fast, slow], T0, 60)
    expect(m.latency_buckets).toEqual({ count: 400, buckets: [[0.1, 50], [0.25, 100], [0.5, 100], [1, 250], [2.5, 400]] })
    expect(m.latency_p50).toBeCloseTo(0.5 + 0.5 * (100 / 150), 12)
    expect(m.latency_p95).toBeCloseTo(1 + 1.5 * (130 / 150), 12)
    expect(m.refusal_wait_p95).toBeNull() // no refusal in either
  })

  it('merges a live point into a coarse bucket by its histogram', () => {
    const bucket = makePoint(T0, { seconds: 60, requests_total: 100, latency_buckets: histogram(100, [0.5, 1, 1, 1, 1]) })
    const live = makePoint(T0 + 30, { requests_total: 300, latency_buckets: histogram(300, [0, 0, 0, 0.5, 1]) })
    const [merged] = addPoint([bucket], live, 60)
    expect(merged!.latency_p95).toBeCloseTo(2.3, 12)
  })

  it('summarizes a range as one point', () => {
    const points = makeSeries('production', T0, 5, 12)
    const s = summarize(points)!
    expect([s.ts, s.seconds, s.requests_total, s.requests_per_s]).toEqual([T0, 60, 1200, 20])
    expect(s.latency_p95).toBe(LATENCY.p95)
    expect(summarize([])).toBeNull()
  })

  it('trims the points that fell out of the range', () => {
    const points = makeSeries('production', T0, 5, 10)
    expect(trimToRange(points, T0 + 50, 20).map((p) => p.ts)).toEqual([T0 + 30, T0 + 35, T0 + 40, T0 + 45])
    expect(trimToRange(points, T0 + 500, 20)).toEqual([])
    expect(trimToRange(points, T0 + 50, 3600)).toBe(points)
  })

  it('appends a round only to the variant shown', () => {
    const data = makeMetrics({ variant: 'canary', series: { canary: makeSeries('canary', T0 - 300, 5, 60) } })
    const next = appendSnapshot(data, makeRound(T0), 300)
    expect(Object.keys(next.series)).toEqual(['canary'])
    expect(next.series.canary!.at(-1)!.ts).toBe(T0)
  })

  it('takes a round whose variants come in two events', () => {
    const data = makeMetrics()
    const first = appendSnapshot(data, makeRound(T0, ['production']), 300)
    const second = appendSnapshot(first, makeRound(T0, ['canary']), 300)
    expect(second.series.production!.at(-1)!.ts).toBe(T0)
    expect(second.series.canary!.at(-1)!.ts).toBe(T0)
    expect(second.series.canary).toHaveLength(60)
  })
})
