// The dashboard API's shapes (docs/dashboard-api.md). Times are epoch seconds, rates per
// second, latencies in seconds, ratios 0..1, null where a figure is unknown.

export const RANGES = ['5m', '15m', '1h', '6h', '24h', '7d'] as const
export type Range = (typeof RANGES)[number]

export const RANGE_SECONDS: Record<Range, number> = {
  '5m': 300,
  '15m': 900,
  '1h': 3600,
  '6h': 6 * 3600,
  '24h': 24 * 3600,
  '7d': 7 * 24 * 3600,
}

/** What the variant selector offers: one variant, every variant overlaid, or a comparison. */
export type VariantChoice = string // a variant name, 'all' or 'compare'
export const ALL = 'all'
export const COMPARE = 'compare'

export interface ModelFigures {
  requests: number
  tokens_in: number
  tokens_out: number
  tokens_cache_read: number
  tokens_cache_write: number
  tokens_reasoning: number
  cost_usd: number
}

/**
 * One client key's share of a point's interval (docs/dashboard-api.md): every answer
 * (`requests`, the refused included), the requests the limiter admitted (by priority
 * class) and those the proxy refused itself (by reason), tokens, and how long the
 * admitted ones waited for the limiter (`wait_buckets`, its percentiles read from it).
 */
export interface ClientFigures {
  requests: number
  requests_2xx: number
  admitted: number
  refused: number
  tokens_in: number
  tokens_out: number
  refused_by: Record<string, number>
  admitted_by_class: Record<string, number>
  wait_buckets: Histogram
  admitted_per_s: number
  wait_p50: number | null
  wait_p95: number | null
  wait_p99: number | null
}

/**
 * Cumulative histogram buckets of a point (seconds): `[upper bound, observations up to
 * it]` for the finite bounds in order, thinned to those a quantile or a merge can need;
 * `count` is the +Inf bucket, every observation.
 */
export interface Histogram {
  count: number
  buckets: [number, number][]
}

/**
 * One stored snapshot: one variant's figures for `[ts, ts + seconds)`. Three latency
 * populations, never mixed: `latency_*` is the whole duration of the requests the
 * upstream answered, `ttfb_*` the time to the first byte of those answers that streamed,
 * `refusal_wait_*` how long the requests the proxy answered itself (`refusals_total`)
 * waited for that answer.
 */
export interface Point {
  ts: number
  seconds: number
  variant: string
  replicas: number
  requests_total: number
  requests_2xx_total: number
  requests_4xx_total: number
  requests_429_total: number
  requests_5xx_total: number
  client_closed_total: number
  requests_per_s: number
  error_ratio: number
  latency_p50: number | null
  latency_p95: number | null
  latency_p99: number | null
  ttfb_p50: number | null
  ttfb_p95: number | null
  ttfb_p99: number | null
  refusal_wait_p50: number | null
  refusal_wait_p95: number | null
  refusal_wait_p99: number | null
  latency_buckets: Histogram
  ttfb_buckets: Histogram
  refusal_wait_buckets: Histogram
  tokens_in_total: number
  tokens_out_total: number
  tokens_cache_read_total: number
  tokens_cache_write_total: number
  tokens_reasoning_total: number
  tokens_estimated_total: number
  tokens_in_per_s: number
  tokens_out_per_s: number
  cost_usd: number
  in_flight: number
  in_flight_max: number
  queued: number
  workers: number
  worker_utilization: number
  degraded_replicas: number
  upstream_errors_total: number
  upstream_429_ratio: number
  upstream_429_frequency_total: number
  upstream_429_concurrency_total: number
  upstream_429_quota_total: number
  upstream_429_congestion_total: number
  retries_total: number
  proxy_rate_limited_total: number
  /** Every answer the proxy made itself, its own 429s included. */
  refusals_total: number
  limiter_rate: number | null
  limiter_ceiling: number | null
  limiter_hold: number | null
  limiter_concurrency: number | null
  limiter_increases_total: number
  limiter_decreases_total: number
  limiter_probes_total: number
  quota_used: Record<string, number>
  quota_reset_at: Record<string, number>
  models: Record<string, ModelFigures>
  /** By client key alias (`anonymous` without PROXY_API_KEYS; past 32, `other`). */
  clients: Record<string, ClientFigures>
}

/** Points per variant, each list ordered by `ts`. */
export type SeriesByVariant = Record<string, Point[]>

export interface MetricsResponse {
  range: Range
  variant: string
  start: number
  end: number
  step: number
  series: SeriesByVariant
  /**
   * Each variant's whole range as one point (null without points), as the API computed
   * it at fetch time. The page derives its range figures from the points instead
   * (lib/series.ts `summarize`: the same merge and quantile), so that live rounds count;
   * the browser test holds the two equal.
   */
  summary: Record<string, Point | null>
  /** Each client key's whole range over the variants answered (the Clients panel's figures). */
  clients: Record<string, ClientFigures>
}

export interface VariantStatus {
  latest: Point | null
  age_seconds: number | null
  stale: boolean
}

export interface StatusResponse {
  now: number
  stale_after: number
  variants: Record<string, VariantStatus>
}

export interface ConfigResponse {
  version: string
  variants: string[]
  ranges: Range[]
  scrape_interval: number
  sse_heartbeat_seconds: number
  limiter: { configured: boolean }
}

export interface LimiterPool {
  /** Requests/s admitted now; null while nothing limits the pool (no 429 seen). */
  rate: number | null
  limited: boolean
  /** The learned limit, requests/s. */
  ceiling: number | null
  hold: number | null
  /** The cluster-wide concurrency cap; null until a 1302. */
  concurrency_limit: number | null
  probing: boolean
  paused: boolean
  last_decision: string
  concurrency_decision: string
  tick: number | null
  updated_at: number | null
  replicas: number
  /** The alias of the upstream key this pool is (ZAI_API_KEYS; default: ZAI_API_KEY). */
  key?: string | null
  /** Set while the key is parked (quota spent, arrears, expired plan); until null: until lifted. */
  parked?: { until: number | null; reason: string; since: number } | null
  /** The clients' flows in the pool now: leases held and requests waiting for a slot. */
  clients?: LimiterFlow[]
}

/** One client's flow in a pool (its class, its weight in the fair share of the cap). */
export interface LimiterFlow {
  client: string
  class: string
  weight: number
  held: number
  waiting: number
}

export interface QuotaWindowState {
  name: string
  used_ratio: number | null
  remaining_ratio: number | null
  reset_at: number | null
}

export interface LimiterState {
  node: string
  leader: boolean
  degraded: boolean
  tick_seconds: number
  pools: Record<string, LimiterPool>
  quota: {
    windows: QuotaWindowState[]
    sample_age_seconds: number | null
    error: string | null
    rate_cap: number | null
  } | null
}

export type LimiterResponse =
  | { available: true; state: LimiterState }
  | { available: false; error: string }

/** The data of one SSE `snapshot` event: one collector round. */
export interface SnapshotEvent {
  ts: number
  variants: Record<string, Point>
}
