// The figures that the panels, the status bar and the comparison table show, computed
// from points. Pure functions: numbers in, numbers out.
import type { LimiterResponse, Point } from '../types'
import type { ChartMarker } from './chart'
import { coveredSeconds, mergeClients, perSecond, summarize, upstreamAttempts } from './series'

/** The headline figures of a variant over a range. */
export interface Headline {
  requestsPerSecond: number | null
  /** p95 of the whole duration of the requests the upstream answered. */
  latencyP95: number | null
  /** p95 of the time to the first byte of the upstream's streamed answers. */
  ttfbP95: number | null
  errorRatio: number | null
  upstream429Ratio: number | null
  /** Requests the proxy answered itself (its 429s included), counted over the range. */
  refusals: number | null
  /** p95 of how long those requests waited for the proxy's answer. */
  refusalWaitP95: number | null
  tokensPerSecond: number | null
  costPerHour: number | null
  limiterRate: number | null
}

export type HeadlineKey = keyof Headline

function sum(points: Point[], value: (p: Point) => number): number {
  return points.reduce((total, p) => total + value(p), 0)
}

function lastKnown(points: Point[], value: (p: Point) => number | null): number | null {
  for (let i = points.length - 1; i >= 0; i--) {
    const v = value(points[i]!)
    if (v !== null) return v
  }
  return null
}

/**
 * Headline figures over `points` (one variant), read from their summary (the range as
 * one point, `summarize`: rates per covered second, ratios of the summed totals,
 * percentiles of the merged histograms), and the limiter's latest rate. Null when there
 * is no point.
 */
export function headline(points: Point[], summary: Point | null = summarize(points)): Headline {
  if (!summary) {
    return {
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
    }
  }
  return {
    requestsPerSecond: summary.requests_per_s,
    latencyP95: summary.latency_p95,
    ttfbP95: summary.ttfb_p95,
    errorRatio: summary.error_ratio,
    upstream429Ratio: summary.upstream_429_ratio,
    refusals: summary.refusals_total,
    refusalWaitP95: summary.refusal_wait_p95,
    tokensPerSecond: summary.tokens_in_per_s + summary.tokens_out_per_s,
    costPerHour: perSecond(summary, summary.cost_usd) * 3600,
    limiterRate: lastKnown(points, (p) => p.limiter_rate),
  }
}

/** Totals over the points of a range (tokens, requests, cost). */
export interface WindowTotals {
  requests: number
  tokensIn: number
  tokensOut: number
  tokensCacheRead: number
  tokensCacheWrite: number
  tokensReasoning: number
  costUsd: number
  seconds: number
}

export function windowTotals(points: Point[]): WindowTotals {
  return {
    requests: sum(points, (p) => p.requests_total),
    tokensIn: sum(points, (p) => p.tokens_in_total),
    tokensOut: sum(points, (p) => p.tokens_out_total),
    tokensCacheRead: sum(points, (p) => p.tokens_cache_read_total),
    tokensCacheWrite: sum(points, (p) => p.tokens_cache_write_total),
    tokensReasoning: sum(points, (p) => p.tokens_reasoning_total),
    costUsd: sum(points, (p) => p.cost_usd),
    seconds: sum(points, coveredSeconds),
  }
}

/** Totals summed over several variants. */
export function addTotals(all: WindowTotals[]): WindowTotals {
  const out = windowTotals([])
  for (const t of all) for (const key of Object.keys(out) as (keyof WindowTotals)[]) out[key] += t[key]
  return out
}

/** One model's share of a range. */
export interface ModelRow {
  model: string
  requests: number
  tokensIn: number
  tokensOut: number
  tokensCacheRead: number
  costUsd: number
}

/** Per-model totals over the points of every variant, the dearest first. */
export function modelTable(pointLists: Point[][]): ModelRow[] {
  const rows = new Map<string, ModelRow>()
  for (const points of pointLists) {
    for (const p of points) {
      for (const [model, f] of Object.entries(p.models)) {
        const row = rows.get(model) ?? { model, requests: 0, tokensIn: 0, tokensOut: 0, tokensCacheRead: 0, costUsd: 0 }
        row.requests += f.requests
        row.tokensIn += f.tokens_in
        row.tokensOut += f.tokens_out
        row.tokensCacheRead += f.tokens_cache_read
        row.costUsd += f.cost_usd
        rows.set(model, row)
      }
    }
  }
  return [...rows.values()].sort((a, b) => b.costUsd - a.costUsd || b.requests - a.requests)
}

/** One client key's row of the Clients panel: its range over the variants shown. */
export interface ClientRow {
  client: string
  /** Its priority classes, most admissions first (a request may ask for a lower one). */
  classes: string[]
  requests: number
  admittedPerSecond: number
  refused: number
  /** Refusals by reason, most first. */
  refusedBy: [string, number][]
  waitP95: number | null
  tokensIn: number
  tokensOut: number
}

/** The alias of every request without a client key (PROXY_API_KEYS unset). */
export const ANONYMOUS = 'anonymous'

function byCount(counts: Record<string, number>): [string, number][] {
  return Object.entries(counts)
    .filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
}

/**
 * The Clients panel's rows from the variants' range summaries (as the API's `clients`):
 * totals summed, admitted/s the variants' rates added, wait p95 from the merged
 * histograms. Busiest first.
 */
export function clientTable(summaries: Record<string, Point | null>): ClientRow[] {
  const shown = Object.values(summaries).filter((p): p is Point => p !== null)
  const merged = mergeClients(
    shown.map((p) => p.clients ?? {}),
    1,
  )
  const rates: Record<string, number> = {}
  for (const p of shown) for (const [client, f] of Object.entries(p.clients ?? {})) rates[client] = (rates[client] ?? 0) + f.admitted_per_s
  return Object.entries(merged)
    .map(([client, f]) => ({
      client,
      classes: byCount(f.admitted_by_class).map(([name]) => name),
      requests: f.requests,
      admittedPerSecond: rates[client] ?? 0,
      refused: f.refused,
      refusedBy: byCount(f.refused_by),
      waitP95: f.wait_p95,
      tokensIn: f.tokens_in,
      tokensOut: f.tokens_out,
    }))
    .sort((a, b) => b.requests - a.requests || a.client.localeCompare(b.client))
}

/** Whether the rows name no configured client key: none, or only `anonymous`. */
export function noClientKeys(rows: ClientRow[]): boolean {
  return rows.every((row) => row.client === ANONYMOUS)
}

export const HEADLINE_LABELS: Record<HeadlineKey, string> = {
  requestsPerSecond: 'Requests / s',
  latencyP95: 'Upstream latency p95',
  ttfbP95: 'Upstream TTFB p95',
  errorRatio: 'Error ratio (5xx)',
  upstream429Ratio: 'Upstream 429 ratio',
  refusals: 'Proxy refusals',
  refusalWaitP95: 'Refusal wait p95',
  tokensPerSecond: 'Tokens / s',
  costPerHour: 'Cost / hour',
  limiterRate: 'Limiter rate',
}

/** One row of the comparison table: a figure per variant and each one's difference. */
export interface ComparisonRow {
  key: HeadlineKey
  label: string
  values: Record<string, number | null>
  /** Per variant other than the baseline: value − baseline. */
  difference: Record<string, number | null>
  /** Per variant other than the baseline: (value − baseline) / baseline. */
  relative: Record<string, number | null>
}

/** The headline figures side by side, each variant's difference from `baseline`. */
export function compareHeadlines(figures: Record<string, Headline>, baseline: string): ComparisonRow[] {
  const base = figures[baseline]
  return (Object.keys(HEADLINE_LABELS) as HeadlineKey[]).map((key) => {
    const values: Record<string, number | null> = {}
    const difference: Record<string, number | null> = {}
    const relative: Record<string, number | null> = {}
    const b = base?.[key] ?? null
    for (const [variant, h] of Object.entries(figures)) {
      const v = h[key]
      values[variant] = v
      if (variant === baseline) continue
      difference[variant] = v !== null && b !== null ? v - b : null
      relative[variant] = v !== null && b !== null && b !== 0 ? (v - b) / Math.abs(b) : null
    }
    return { key, label: HEADLINE_LABELS[key], values, difference, relative }
  })
}

/** Variant names in display order: production first, then by name. */
export function orderVariants(names: Iterable<string>): string[] {
  return [...new Set(names)].sort((a, b) => (a === 'production' ? -1 : b === 'production' ? 1 : a.localeCompare(b)))
}

/** The variant that others are compared with: production when there is one. */
export function baselineOf(variants: string[]): string | undefined {
  return variants.includes('production') ? 'production' : variants[0]
}

/**
 * The limiter's decisions on the time axis: a probe, a back-off (the ceiling moved down)
 * or a raise wherever a point counted one (`limiter_*_total` hold each interval's delta).
 */
export function limiterMarkers(points: Point[], variant?: string): ChartMarker[] {
  const suffix = variant ? ` (${variant})` : ''
  const markers: ChartMarker[] = []
  for (const p of points) {
    if (p.limiter_decreases_total > 0) markers.push({ ts: p.ts, kind: 'backoff', label: `back-off ×${p.limiter_decreases_total}${suffix}` })
    if (p.limiter_probes_total > 0) markers.push({ ts: p.ts, kind: 'probe', label: `probe ×${p.limiter_probes_total}${suffix}` })
  }
  return markers
}

/**
 * Markers of several variants on one axis: variants behind one upstream key share one
 * limiter, so its decisions show in each; one marker per (time, kind) remains.
 */
export function mergeMarkers(lists: ChartMarker[][]): ChartMarker[] {
  const merged = new Map<string, ChartMarker>()
  for (const list of lists) {
    for (const m of list) {
      const key = `${m.ts}|${m.kind}`
      const known = merged.get(key)
      merged.set(key, known ? { ...known, label: `${known.label}, ${m.label}` } : m)
    }
  }
  return [...merged.values()].sort((a, b) => a.ts - b.ts)
}

/** Upstream 429s of each class as a share of upstream attempts. */
export function ratio429ByClass(p: Point): Record<'frequency' | 'concurrency' | 'quota' | 'congestion', number> {
  const attempts = upstreamAttempts(p)
  const share = (n: number) => (attempts > 0 ? Math.min(1, n / attempts) : 0)
  return {
    frequency: share(p.upstream_429_frequency_total),
    concurrency: share(p.upstream_429_concurrency_total),
    quota: share(p.upstream_429_quota_total),
    congestion: share(p.upstream_429_congestion_total),
  }
}

/** A provider quota window: how much is used and when it resets. */
export interface QuotaWindow {
  name: string
  used: number | null
  resetAt: number | null
}

/**
 * The quota windows: from the limiter's own poller when the limiter answers, else from
 * the newest point that carries them (the proxies export what the limiter shares).
 */
export function quotaWindows(limiter: LimiterResponse | null, latest: Point | null): QuotaWindow[] {
  const quota = limiter?.available ? limiter.state.quota : null
  if (quota && quota.windows.length) {
    return quota.windows.map((w) => ({ name: w.name, used: w.used_ratio, resetAt: w.reset_at }))
  }
  if (!latest) return []
  const names = new Set([...Object.keys(latest.quota_used), ...Object.keys(latest.quota_reset_at)])
  return [...names].sort().map((name) => ({
    name,
    used: latest.quota_used[name] ?? null,
    resetAt: latest.quota_reset_at[name] ?? null,
  }))
}

/** The newest point of a list, or null. */
export function latestPoint(points: Point[] | undefined): Point | null {
  return points?.length ? points[points.length - 1]! : null
}
