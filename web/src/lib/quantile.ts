// Quantiles from cumulative histogram buckets: the one definition the dashboard uses, a
// port of services/collector/percentiles.py (`quantile`, `merge_buckets`), which follows
// Prometheus's `histogram_quantile` for classic buckets. Linear interpolation inside the
// bucket that holds the rank; the lowest bucket starts at 0 (unless its bound is <= 0,
// then that bound is the answer); a rank in the +Inf bucket answers the highest finite
// bound; counts within a relative 1e-12 are one, and a count that goes down is lifted to
// the running maximum. Where Prometheus answers NaN this answers null; q < 0 answers
// -Infinity and q > 1 +Infinity, as there.
import type { Histogram } from '../types'

/** An upper bound (seconds, `Infinity` for +Inf) and the count of observations up to it. */
export type Bucket = readonly [bound: number, cumulative: number]

// Relative difference below which two neighbouring counts are one (Prometheus's value).
export const PRECISION_TOLERANCE = 1e-12

/** The q-quantile of cumulative buckets (any order, +Inf included), or null without one. */
export function quantile(buckets: readonly Bucket[], q: number): number | null {
  if (Number.isNaN(q)) return null
  if (q < 0) return -Infinity
  if (q > 1) return Infinity
  if (!buckets.length) return null
  const sorted = [...buckets].sort((a, b) => a[0] - b[0])
  const bounds = sorted.map((b) => b[0])
  const highest = bounds[bounds.length - 1]!
  if (highest !== Infinity || bounds.length < 2) return null
  const counts = monotonic(withoutPrecisionErrors(sorted.map((b) => b[1])))
  const observations = counts[counts.length - 1]!
  if (observations === 0) return null

  let rank = q * observations
  // The first bucket (the +Inf one excluded) whose count reaches the rank.
  let b = counts.findIndex((count, i) => i < counts.length - 1 && count >= rank)
  if (b < 0) b = counts.length - 1
  if (b === counts.length - 1) return bounds[bounds.length - 2]!
  if (b === 0 && bounds[0]! <= 0) return bounds[0]!
  let start = 0
  let count = counts[b]!
  if (b > 0) {
    start = bounds[b - 1]!
    count -= counts[b - 1]!
    rank -= counts[b - 1]!
  }
  if (count === 0) return null // q = 0 over an empty lowest bucket: Prometheus's 0/0
  return start + (bounds[b]! - start) * (rank / count)
}

/** The buckets of a point's histogram, its +Inf bucket (`count`) included. */
export function bucketsOf(histogram: Histogram): Bucket[] {
  return [...histogram.buckets, [Infinity, histogram.count]]
}

/** The q-quantile of a point's histogram, or null when it holds no observation. */
export function histogramQuantile(histogram: Histogram, q: number): number | null {
  return quantile(bucketsOf(histogram), q)
}

/**
 * Histograms summed by upper bound. One that lacks a bound the others have (the API
 * thins out bounds that change no quantile) contributes its count at its next lower
 * bound, what it certainly held by then, so the sum stays cumulative.
 */
export function mergeHistograms(histograms: readonly Histogram[]): Histogram {
  const layouts = histograms.map(bucketsOf)
  const bounds = [...new Set(layouts.flatMap((buckets) => buckets.map((b) => b[0])))].sort((a, b) => a - b)
  const merged = new Map(bounds.map((bound) => [bound, 0]))
  for (const own of layouts) {
    own.sort((a, b) => a[0] - b[0])
    let i = 0
    for (const bound of bounds) {
      while (i < own.length && own[i]![0] <= bound) i++
      if (i) merged.set(bound, merged.get(bound)! + own[i - 1]![1])
    }
  }
  return {
    count: merged.get(Infinity) ?? 0,
    buckets: bounds.filter((bound) => bound !== Infinity).map((bound) => [bound, merged.get(bound)!]),
  }
}

function withoutPrecisionErrors(counts: number[]): number[] {
  const fixed = [...counts]
  let previous = fixed[0]!
  for (let i = 1; i < fixed.length; i++) {
    const current = fixed[i]!
    const delta = Math.abs(current - previous)
    if (delta === 0) continue
    if (current !== 0 && delta / current <= PRECISION_TOLERANCE) fixed[i] = previous
    else previous = current
  }
  return fixed
}

function monotonic(counts: number[]): number[] {
  let highest = -Infinity
  return counts.map((count) => (highest = Math.max(highest, count)))
}
