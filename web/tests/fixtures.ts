// Points and answers as the dashboard API sends them, for the tests.
import { summarize } from '../src/lib/series'
import type { ClientFigures, Histogram, MetricsResponse, Point, SnapshotEvent, StatusResponse } from '../src/types'

const BOUNDS = [0.1, 0.25, 0.5, 1, 2.5]

/** A histogram of `count` observations, `shares` of them up to each of 0.1, 0.25, 0.5, 1, 2.5 s. */
export function histogram(count: number, shares: number[]): Histogram {
  return { count, buckets: BOUNDS.map((bound, i) => [bound, count * shares[i]!]) }
}

// Latency: 10%, 50%, 80%, 96%, 100% up to each bound; p50 0.25 s (rank 50 ends the (0.1,
// 0.25] bucket), p95 0.5 + 0.5 × 15/16, p99 1 + 1.5 × 3/4.
export const LATENCY_SHARES = [0.1, 0.5, 0.8, 0.96, 1]
export const LATENCY = { p50: 0.25, p95: 0.96875, p99: 2.125 }
// TTFB: 60%, 90%, 99%, 100%, 100%; p50 0.1 × 50/60, p95 0.25 + 0.25 × 5/9, p99 0.5.
export const TTFB_SHARES = [0.6, 0.9, 0.99, 1, 1]
export const TTFB = { p50: 0.1 * (50 / 60), p95: 0.25 + 0.25 * (5 / 9), p99: 0.5 }

/** A plausible 5 s point of `variant` at `ts`, with `overrides`. */
export function makePoint(ts: number, overrides: Partial<Point> = {}): Point {
  const seconds = overrides.seconds ?? 5
  const requests = overrides.requests_total ?? 100
  return {
    ts,
    seconds,
    variant: 'production',
    replicas: 2,
    requests_total: requests,
    requests_2xx_total: requests * 0.9,
    requests_4xx_total: requests * 0.06,
    requests_429_total: requests * 0.03,
    requests_5xx_total: requests * 0.01,
    client_closed_total: 0,
    requests_per_s: requests / seconds,
    error_ratio: 0.01,
    latency_p50: LATENCY.p50,
    latency_p95: LATENCY.p95,
    latency_p99: LATENCY.p99,
    ttfb_p50: TTFB.p50,
    ttfb_p95: TTFB.p95,
    ttfb_p99: TTFB.p99,
    refusal_wait_p50: null,
    refusal_wait_p95: null,
    refusal_wait_p99: null,
    latency_buckets: histogram(requests, LATENCY_SHARES),
    ttfb_buckets: histogram(requests, TTFB_SHARES),
    refusal_wait_buckets: { count: 0, buckets: [] },
    tokens_in_total: requests * 400,
    tokens_out_total: requests * 80,
    tokens_cache_read_total: requests * 100,
    tokens_cache_write_total: 0,
    tokens_reasoning_total: requests * 10,
    tokens_estimated_total: 0,
    tokens_in_per_s: (requests * 400) / seconds,
    tokens_out_per_s: (requests * 80) / seconds,
    cost_usd: requests * 0.0004,
    in_flight: 7,
    in_flight_max: 12,
    queued: 0,
    workers: 256,
    worker_utilization: 7 / 256,
    degraded_replicas: 0,
    upstream_errors_total: 4,
    upstream_429_ratio: 0.02,
    upstream_429_frequency_total: 2,
    upstream_429_concurrency_total: 1,
    upstream_429_quota_total: 0,
    upstream_429_congestion_total: 0,
    retries_total: 3,
    proxy_rate_limited_total: 0,
    refusals_total: 0,
    limiter_rate: 24.5,
    limiter_ceiling: 25,
    limiter_hold: 23.75,
    limiter_concurrency: 64,
    limiter_increases_total: 0,
    limiter_decreases_total: 0,
    limiter_probes_total: 0,
    quota_used: { '5h': 0.42, weekly: 0.1 },
    quota_reset_at: { '5h': ts + 3600, weekly: ts + 86400 },
    models: {
      'glm-4.6': { requests, tokens_in: requests * 400, tokens_out: requests * 80, tokens_cache_read: requests * 100, tokens_cache_write: 0, tokens_reasoning: 0, cost_usd: requests * 0.0004 },
    },
    clients: {},
    ...overrides,
  }
}

/** A client's figures: `admitted` requests answered 200 after `waits`, and refusals by reason. */
export function makeClient(waits: number[], refusedBy: Record<string, number> = {}, klass = 'interactive'): ClientFigures {
  const bounds = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
  const refused = Object.values(refusedBy).reduce((a, b) => a + b, 0)
  const admitted = waits.length
  return {
    requests: admitted + refused,
    requests_2xx: admitted,
    admitted,
    refused,
    tokens_in: admitted * 100,
    tokens_out: admitted * 20,
    refused_by: refusedBy,
    admitted_by_class: admitted ? { [klass]: admitted } : {},
    wait_buckets: { count: admitted, buckets: bounds.map((b) => [b, waits.filter((w) => w <= b).length]) },
    admitted_per_s: admitted / 5,
    wait_p50: null,
    wait_p95: null,
    wait_p99: null,
  }
}

/** Points every `step` seconds from `start`, `count` of them. */
export function makeSeries(variant: string, start: number, step: number, count: number, overrides: Partial<Point> = {}): Point[] {
  return Array.from({ length: count }, (_, i) => makePoint(start + i * step, { variant, seconds: step, requests_total: 20 * step, ...overrides }))
}

export const T0 = 1_795_748_400 // aligned to the hour

/** A `/api/metrics` answer. */
export function makeMetrics(overrides: Partial<MetricsResponse> = {}): MetricsResponse {
  const step = overrides.step ?? 5
  const series = overrides.series ?? {
    production: makeSeries('production', T0 - 300, step, 300 / step),
    canary: makeSeries('canary', T0 - 300, step, 300 / step, { requests_total: 2 * step }),
  }
  return {
    range: '5m',
    variant: 'all',
    start: T0 - 300,
    end: T0,
    step,
    series,
    summary: Object.fromEntries(Object.entries(series).map(([v, points]) => [v, summarize(points)])),
    clients: {},
    ...overrides,
  }
}

/** A snapshot event: one round of every variant at `ts`. */
export function makeRound(ts: number, variants = ['production', 'canary']): SnapshotEvent {
  return { ts, variants: Object.fromEntries(variants.map((v) => [v, makePoint(ts, { variant: v })])) }
}

/** A `/api/status` answer whose points ended `age` seconds before `now`. */
export function makeStatus(now: number, age = 2): StatusResponse {
  const latest = (variant: string) => makePoint(now - age - 5, { variant })
  return {
    now,
    stale_after: 15,
    variants: {
      production: { latest: latest('production'), age_seconds: age, stale: false },
      canary: { latest: latest('canary'), age_seconds: age, stale: false },
    },
  }
}

/** A fetch that answers JSON by path and records each call. */
export function fakeFetch(answer: (url: URL) => unknown) {
  const calls: { url: URL; init?: RequestInit }[] = []
  const fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const url = new URL(String(input))
    calls.push({ url, init })
    if (init?.signal?.aborted) throw new DOMException('aborted', 'AbortError')
    const body = answer(url)
    if (body instanceof Response) return body
    return new Response(JSON.stringify(body), { status: 200, headers: { 'content-type': 'application/json' } })
  }
  return { fetch: fetch as typeof globalThis.fetch, calls }
}

type Listener = (event: Event) => void

/** An EventSource stand-in: the test opens it, sends events and fails it. */
export class FakeEventSource {
  static instances: FakeEventSource[] = []
  readonly url: string
  readyState = 0
  closed = false
  private listeners = new Map<string, Listener[]>()

  constructor(url: string) {
    this.url = url
    FakeEventSource.instances.push(this)
  }

  static reset(): void {
    FakeEventSource.instances = []
  }

  static get last(): FakeEventSource {
    const last = FakeEventSource.instances[FakeEventSource.instances.length - 1]
    if (!last) throw new Error('no EventSource was made')
    return last
  }

  addEventListener(type: string, listener: Listener): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener])
  }

  removeEventListener(type: string, listener: Listener): void {
    this.listeners.set(type, (this.listeners.get(type) ?? []).filter((l) => l !== listener))
  }

  close(): void {
    this.closed = true
    this.readyState = 2
  }

  open(): void {
    this.readyState = 1
    this.dispatch('open', new Event('open'))
  }

  snapshot(event: SnapshotEvent, id = String(event.ts * 1000)): void {
    this.dispatch('snapshot', new MessageEvent('snapshot', { data: JSON.stringify(event), lastEventId: id }))
  }

  fail(): void {
    this.readyState = 0 // the browser would retry by itself; the stream closes it instead
    this.dispatch('error', new Event('error'))
  }

  private dispatch(type: string, event: Event): void {
    for (const listener of this.listeners.get(type) ?? []) listener(event)
  }
}
