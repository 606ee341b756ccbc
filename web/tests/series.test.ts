import { describe, expect, it } from 'vitest'
import { addPoint, appendSnapshot, coveredSeconds, mergePoints, trimToRange } from '../src/lib/series'
import { T0, makeMetrics, makePoint, makeRound, makeSeries } from './fixtures'

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
    const a = makePoint(T0, { requests_total: 100, in_flight: 10, in_flight_max: 20, limiter_rate: 20, latency_p95: 1 })
    const b = makePoint(T0 + 5, { requests_total: 300, in_flight: 30, in_flight_max: 25, limiter_rate: null, latency_p95: 2, requests_5xx_total: 30 })
    const m = mergePoints([a, b], T0, 60)
    expect(m.requests_total).toBe(400)
    expect(m.requests_5xx_total).toBe(31)
    expect(m.error_ratio).toBeCloseTo(31 / 400)
    expect(m.requests_per_s).toBe(40)
    expect(m.in_flight).toBe(20)
    expect(m.in_flight_max).toBe(25)
    expect(m.limiter_rate).toBe(20)
    expect(m.latency_p95).toBe(1.5)
    expect(m.models['glm-4.6']!.requests).toBe(400)
    expect(m.seconds).toBe(60)
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
