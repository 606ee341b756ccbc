import { describe, expect, it } from 'vitest'
import { histogramQuantile, mergeHistograms, quantile, type Bucket } from '../src/lib/quantile'
import type { Histogram } from '../src/types'

// Cumulative: 2 observations up to 1 s, 4 more up to 2 s, 4 more up to 4 s, none above.
const TEN: Bucket[] = [
  [1, 2],
  [2, 6],
  [4, 10],
  [Infinity, 10],
]

describe('quantile (the collector\'s and Prometheus\'s interpolation)', () => {
  it.each([
    // rank 1 of 10 lies in (0, 1], halfway through its 2: 0 + 1 × 1/2
    [0.1, 0.5],
    // rank 5: 3 of the 4 in (1, 2]: 1 + 1 × 3/4
    [0.5, 1.75],
    // rank 9.5: 3.5 of the 4 in (2, 4]: 2 + 2 × 3.5/4
    [0.95, 3.75],
    [1, 4],
    [0, 0],
  ])('q = %s of 10 observations is %s', (q, expected) => {
    expect(quantile(TEN, q)).toBe(expected)
  })

  it('takes the buckets in any order', () => {
    expect(quantile([...TEN].reverse(), 0.5)).toBe(1.75)
  })

  it('answers the highest finite bound for a rank in the +Inf bucket', () => {
    expect(
      quantile(
        [
          [1, 2],
          [Infinity, 10],
        ],
        0.5,
      ),
    ).toBe(1)
  })

  it('answers a lowest bound at or below 0 as itself', () => {
    expect(
      quantile(
        [
          [0, 5],
          [1, 10],
          [Infinity, 10],
        ],
        0.2,
      ),
    ).toBe(0)
  })

  it('lifts a count that goes down to the running maximum', () => {
    // counts 5, 3, 10 read as 5, 5, 10: rank 6 is 1 of the 5 in (2, 4]
    const dented: Bucket[] = [
      [1, 5],
      [2, 3],
      [4, 10],
      [Infinity, 10],
    ]
    expect(quantile(dented, 0.6)).toBe(2.4)
    expect(quantile(dented, 0.5)).toBe(1)
  })

  it('treats counts within a relative 1e-12 as one', () => {
    // 10 + 5e-12 is 10: the rank just above 10 falls into (2, 4], not (1, 2]
    const fuzzy: Bucket[] = [
      [1, 10],
      [2, 10 + 5e-12],
      [4, 20],
      [Infinity, 20],
    ]
    expect(quantile(fuzzy, (10 + 2.5e-12) / 20)).toBeCloseTo(2, 9)
  })

  it('has no quantile where Prometheus answers NaN', () => {
    expect(quantile([], 0.5)).toBeNull()
    expect(quantile([[1, 3]], 0.5)).toBeNull() // no +Inf bucket
    expect(quantile([[Infinity, 3]], 0.5)).toBeNull() // fewer than two buckets
    expect(quantile([[1, 0], [2, 0], [Infinity, 0]], 0.5)).toBeNull() // no observations
    expect(quantile([[1, 0], [2, 4], [Infinity, 4]], 0)).toBeNull() // 0/0 in the lowest bucket
    expect(quantile(TEN, Number.NaN)).toBeNull()
  })

  it('answers -Infinity below q = 0 and +Infinity above q = 1', () => {
    expect(quantile(TEN, -0.1)).toBe(-Infinity)
    expect(quantile(TEN, 1.1)).toBe(Infinity)
  })

  it('reads a point\'s histogram, its count as the +Inf bucket', () => {
    const h: Histogram = {
      count: 10,
      buckets: [
        [1, 2],
        [2, 6],
        [4, 10],
      ],
    }
    expect(histogramQuantile(h, 0.95)).toBe(3.75)
    expect(histogramQuantile({ count: 0, buckets: [] }, 0.95)).toBeNull()
  })
})

describe('mergeHistograms', () => {
  it('sums by bound; a histogram without a bound counts what it had at its next lower one', () => {
    const a: Histogram = { count: 10, buckets: [[1, 4], [4, 10]] }
    const b: Histogram = { count: 6, buckets: [[2, 3], [4, 6]] }
    expect(mergeHistograms([a, b])).toEqual({ count: 16, buckets: [[1, 4], [2, 7], [4, 16]] })
  })

  it('changes no quantile when the API has thinned out the flat bounds', () => {
    // Five observations in (2, 4], none elsewhere: the API drops 1, 8 and 16 s.
    const full: Histogram = { count: 5, buckets: [[1, 0], [2, 0], [4, 5], [8, 5], [16, 5]] }
    const thin: Histogram = { count: 5, buckets: [[2, 0], [4, 5]] }
    const other: Histogram = { count: 4, buckets: [[1, 1], [2, 2], [4, 2], [8, 3], [16, 4]] }
    for (const q of [0.25, 0.5, 0.95, 0.99]) {
      expect(histogramQuantile(mergeHistograms([thin, other]), q)).toBe(histogramQuantile(mergeHistograms([full, other]), q))
    }
    // Merged: 1, 2, 7, 8, 9 up to 1, 2, 4, 8, 16 s. The p95's rank 8.55 of 9 is 0.55 of the
    // one observation in (8, 16]: 8 + 8 × 0.55.
    expect(histogramQuantile(mergeHistograms([thin, other]), 0.95)).toBeCloseTo(12.4, 12)
  })

  it('merges nothing into an empty histogram', () => {
    expect(mergeHistograms([])).toEqual({ count: 0, buckets: [] })
    expect(histogramQuantile(mergeHistograms([]), 0.5)).toBeNull()
  })
})
