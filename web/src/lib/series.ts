// Series maths mirroring the collector's rollup rules (services/collector/rollup.py), so
// that live points merged into a coarse bucket, and a whole range summed into one point,
// read like the buckets the API returns.
import type { ClientFigures, MetricsResponse, ModelFigures, Point, SeriesByVariant, SnapshotEvent } from '../types'
import { histogramQuantile, mergeHistograms } from './quantile'

const TOTALS = [
  'requests_total',
  'requests_2xx_total',
  'requests_4xx_total',
  'requests_429_total',
  'requests_5xx_total',
  'client_closed_total',
  'tokens_in_total',
  'tokens_out_total',
  'tokens_cache_read_total',
  'tokens_cache_write_total',
  'tokens_reasoning_total',
  'tokens_estimated_total',
  'cost_usd',
  'upstream_errors_total',
  'upstream_429_frequency_total',
  'upstream_429_concurrency_total',
  'upstream_429_quota_total',
  'upstream_429_congestion_total',
  'retries_total',
  'proxy_rate_limited_total',
  'refusals_total',
  'limiter_increases_total',
  'limiter_decreases_total',
  'limiter_probes_total',
] as const satisfies readonly (keyof Point)[]

const GAUGES = [
  'in_flight',
  'queued',
  'workers',
  'worker_utilization',
  'degraded_replicas',
] as const satisfies readonly (keyof Point)[]

// Averaged over the points that have a value.
const OPTIONAL_GAUGES = [
  'limiter_rate',
  'limiter_ceiling',
  'limiter_hold',
  'limiter_concurrency',
] as const satisfies readonly (keyof Point)[]

// Each percentile family and the histogram it is read from: merged points take their
// percentiles from the summed buckets, never from the points' percentiles.
const HISTOGRAMS = {
  latency: 'latency_buckets',
  ttfb: 'ttfb_buckets',
  refusal_wait: 'refusal_wait_buckets',
} as const satisfies Record<string, keyof Point>

const PERCENTILES = [
  ['p50', 0.5],
  ['p95', 0.95],
  ['p99', 0.99],
] as const

const MODEL_FIELDS = [
  'requests',
  'tokens_in',
  'tokens_out',
  'tokens_cache_read',
  'tokens_cache_write',
  'tokens_reasoning',
  'cost_usd',
] as const satisfies readonly (keyof ModelFigures)[]

// A client's totals and its maps of counts, summed client by client (as rollup.py's
// merge_clients).
const CLIENT_TOTALS = [
  'requests',
  'requests_2xx',
  'admitted',
  'refused',
  'tokens_in',
  'tokens_out',
] as const satisfies readonly (keyof ClientFigures)[]
const CLIENT_COUNTS = ['refused_by', 'admitted_by_class'] as const satisfies readonly (keyof ClientFigures)[]

function addCounts(into: Record<string, number>, from: Record<string, number>): void {
  for (const [key, count] of Object.entries(from)) into[key] = (into[key] ?? 0) + count
}

/**
 * Per-client figures summed client by client, the wait histograms merged and its
 * percentiles read from them; `admitted_per_s` per second of `covered`.
 */
export function mergeClients(maps: Record<string, ClientFigures>[], covered: number): Record<string, ClientFigures> {
  const grouped: Record<string, ClientFigures[]> = {}
  for (const clients of maps) for (const [client, f] of Object.entries(clients)) (grouped[client] ??= []).push(f)
  const out: Record<string, ClientFigures> = {}
  for (const [client, parts] of Object.entries(grouped)) {
    const sum = Object.fromEntries(CLIENT_TOTALS.map((f) => [f, parts.reduce((total, p) => total + p[f], 0)])) as Record<
      (typeof CLIENT_TOTALS)[number],
      number
    >
    const counts = Object.fromEntries(CLIENT_COUNTS.map((f) => [f, {} as Record<string, number>])) as Record<
      (typeof CLIENT_COUNTS)[number],
      Record<string, number>
    >
    for (const p of parts) for (const f of CLIENT_COUNTS) addCounts(counts[f], p[f])
    const wait = mergeHistograms(parts.map((p) => p.wait_buckets))
    out[client] = {
      ...sum,
      ...counts,
      wait_buckets: wait,
      admitted_per_s: covered > 0 ? sum.admitted / covered : 0,
      wait_p50: histogramQuantile(wait, 0.5),
      wait_p95: histogramQuantile(wait, 0.95),
      wait_p99: histogramQuantile(wait, 0.99),
    }
  }
  return out
}

/** The start of the `seconds`-long bucket holding `ts` (buckets align to the epoch). */
export function bucketStart(ts: number, seconds: number): number {
  return Math.floor(ts / seconds) * seconds
}

/**
 * The seconds a point's totals were counted over. A bucket with missing scrapes covers
 * less than its length, and the API's rates are per covered second; recover it from a
 * rate and its total, else assume the whole bucket.
 */
export function coveredSeconds(p: Point): number {
  if (p.requests_per_s > 0 && p.requests_total > 0) return p.requests_total / p.requests_per_s
  if (p.tokens_in_per_s > 0 && p.tokens_in_total > 0) return p.tokens_in_total / p.tokens_in_per_s
  return p.seconds
}

/** A total of the point as a rate per covered second. */
export function perSecond(p: Point, total: number): number {
  const covered = coveredSeconds(p)
  return covered > 0 ? total / covered : 0
}

/** Upstream attempts: requests that went upstream (all but the proxy's own 429s) + retries. */
export function upstreamAttempts(p: Point): number {
  return p.requests_total - p.proxy_rate_limited_total + p.retries_total
}

/** Upstream 429 answers of every class. */
export function upstream429s(p: Point): number {
  return (
    p.upstream_429_frequency_total +
    p.upstream_429_concurrency_total +
    p.upstream_429_quota_total +
    p.upstream_429_congestion_total
  )
}

function weighted(pairs: [number, number][]): number {
  let total = 0
  let weight = 0
  for (const [value, w] of pairs) {
    total += value * w
    weight += w
  }
  return weight > 0 ? total / weight : 0
}

/** One point for `[ts, ts + seconds)` from points of one variant inside it. */
export function mergePoints(points: Point[], ts: number, seconds: number): Point {
  const first = points[0]
  if (!first) throw new Error('nothing to merge')
  const covered = points.map(coveredSeconds)
  const out: Point = { ...first, ts, seconds, models: {}, quota_used: {}, quota_reset_at: {} }
  for (const name of TOTALS) out[name] = points.reduce((sum, p) => sum + p[name], 0)
  for (const name of GAUGES) out[name] = weighted(points.map((p, i) => [p[name], covered[i]!]))
  for (const name of OPTIONAL_GAUGES) {
    const present = points
      .map((p, i): [number | null, number] => [p[name], covered[i]!])
      .filter((pair): pair is [number, number] => pair[0] !== null)
    out[name] = present.length ? weighted(present) : null
  }
  for (const family of Object.keys(HISTOGRAMS) as (keyof typeof HISTOGRAMS)[]) {
    const name = HISTOGRAMS[family]
    const merged = (out[name] = mergeHistograms(points.map((p) => p[name])))
    for (const [suffix, q] of PERCENTILES) out[`${family}_${suffix}`] = histogramQuantile(merged, q)
  }
  out.replicas = Math.max(...points.map((p) => p.replicas))
  out.in_flight_max = Math.max(...points.map((p) => p.in_flight_max))
  for (const p of points) {
    Object.assign(out.quota_used, p.quota_used)
    Object.assign(out.quota_reset_at, p.quota_reset_at)
    for (const [model, figures] of Object.entries(p.models)) {
      const sum = (out.models[model] ??= Object.fromEntries(MODEL_FIELDS.map((f) => [f, 0])) as unknown as ModelFigures)
      for (const f of MODEL_FIELDS) sum[f] += figures[f]
    }
  }
  const per = covered.reduce((a, b) => a + b, 0)
  out.clients = mergeClients(
    points.map((p) => p.clients ?? {}),
    per,
  )
  out.requests_per_s = per > 0 ? out.requests_total / per : 0
  out.tokens_in_per_s = per > 0 ? out.tokens_in_total / per : 0
  out.tokens_out_per_s = per > 0 ? out.tokens_out_total / per : 0
  out.error_ratio = out.requests_total > 0 ? out.requests_5xx_total / out.requests_total : 0
  const attempts = upstreamAttempts(out)
  out.upstream_429_ratio = attempts > 0 ? Math.min(1, upstream429s(out) / attempts) : 0
  return out
}

/**
 * The points of a range as one point, or null for none: totals summed, rates per covered
 * second, percentiles from the merged histograms. The headline figures and the charts'
 * range readouts are read from it, so they are one number for one range.
 */
export function summarize(points: Point[]): Point | null {
  const first = points[0]
  const last = points[points.length - 1]
  if (!first || !last) return null
  return mergePoints(points, first.ts, last.ts + last.seconds - first.ts)
}

/** Each variant's points as one point (`summarize`). */
export function summarizeEach(series: SeriesByVariant): Record<string, Point | null> {
  return Object.fromEntries(Object.entries(series).map(([variant, points]) => [variant, summarize(points)]))
}

/**
 * `points` with a live point added: appended (or replacing one with the same `ts`) when
 * the series is as fine as the point, else merged into the `step`-second bucket that
 * holds it. A point that ended before `fetchedEnd` is taken as already counted in the
 * fetched buckets and skipped. Returns a new array; `points` is not changed.
 */
export function addPoint(points: Point[], point: Point, step: number, fetchedEnd = -Infinity): Point[] {
  const last = points[points.length - 1]
  if (last && point.ts < last.ts) return points // out of order: the bucket is history
  if (step <= point.seconds) {
    if (last && last.ts === point.ts) return [...points.slice(0, -1), point]
    return [...points, point]
  }
  if (point.ts + point.seconds <= fetchedEnd) return points
  const bucket = bucketStart(point.ts, step)
  if (last && last.ts === bucket) {
    return [...points.slice(0, -1), mergePoints([last, point], bucket, step)]
  }
  return [...points, mergePoints([point], bucket, step)]
}

/** The points that still fall in the last `rangeSeconds` before `end`. */
export function trimToRange(points: Point[], end: number, rangeSeconds: number): Point[] {
  const start = end - rangeSeconds
  const keep = points.findIndex((p) => p.ts + p.seconds > start)
  if (keep === 0) return points
  return keep < 0 ? [] : points.slice(keep)
}

/**
 * The metrics with one SSE round appended to the series of the variants shown, each
 * trimmed to the range. Returns a new object (for `shallowRef`); untouched series keep
 * their identity.
 */
export function appendSnapshot(
  data: MetricsResponse,
  event: SnapshotEvent,
  rangeSeconds: number,
): MetricsResponse {
  const series = { ...data.series }
  let end = data.end
  for (const [variant, point] of Object.entries(event.variants)) {
    if (data.variant !== 'all' && variant !== data.variant) continue
    const grown = addPoint(series[variant] ?? [], point, data.step, data.end)
    end = Math.max(end, point.ts + point.seconds)
    series[variant] = grown
  }
  for (const variant of Object.keys(series)) {
    series[variant] = trimToRange(series[variant]!, end, rangeSeconds)
  }
  return { ...data, end, start: end - rangeSeconds, series }
}
