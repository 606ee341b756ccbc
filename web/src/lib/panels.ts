// What each panel plots: figure specs (label, colour variable, value of a point), so
// that the panel components only wire data to charts.
import type { Point } from '../types'
import type { FigureSpec } from './chart'
import { ratio429ByClass } from './figures'
import { perSecond } from './series'

const perMinute = (p: Point, total: number) => perSecond(p, total) * 60

export const REQUEST_SPECS: FigureSpec[] = [
  { label: '2xx', color: '--c-2xx', value: (p) => perSecond(p, p.requests_2xx_total), fill: true },
  // 4xx counts 429 too: plot the rest apart from the 429s.
  { label: '4xx', color: '--c-4xx', value: (p) => perSecond(p, Math.max(0, p.requests_4xx_total - p.requests_429_total)) },
  { label: '429', color: '--c-429', value: (p) => perSecond(p, p.requests_429_total) },
  { label: '5xx', color: '--c-5xx', value: (p) => perSecond(p, p.requests_5xx_total) },
]

export const LATENCY_SPECS: FigureSpec[] = [
  { label: 'p50', color: '--c-p50', value: (p) => p.latency_p50 },
  { label: 'p95', color: '--c-p95', value: (p) => p.latency_p95 },
  { label: 'p99', color: '--c-p99', value: (p) => p.latency_p99 },
  { label: 'TTFB p50', color: '--c-ttfb', value: (p) => p.ttfb_p50 },
  { label: 'TTFB p95', color: '--c-ttfb95', value: (p) => p.ttfb_p95 },
]

export const TOKEN_SPECS: FigureSpec[] = [
  { label: 'in', color: '--c-in', value: (p) => perSecond(p, p.tokens_in_total), fill: true },
  { label: 'out', color: '--c-out', value: (p) => perSecond(p, p.tokens_out_total) },
  { label: 'cache read', color: '--c-cache-read', value: (p) => perSecond(p, p.tokens_cache_read_total) },
  { label: 'cache write', color: '--c-cache-write', value: (p) => perSecond(p, p.tokens_cache_write_total) },
]

export const COST_SPECS: FigureSpec[] = [
  { label: 'cost / h', color: '--c-cost', value: (p) => perSecond(p, p.cost_usd) * 3600, fill: true },
]

export const CONCURRENCY_SPECS: FigureSpec[] = [
  { label: 'in flight', color: '--c-inflight', value: (p) => p.in_flight, fill: true },
  { label: 'in flight max', color: '--c-inflight-max', value: (p) => p.in_flight_max },
  { label: 'queued', color: '--c-queued', value: (p) => p.queued },
  { label: 'utilisation', color: '--c-util', value: (p) => p.worker_utilization, scale: 'y2' },
]

export const LIMITER_SPECS: FigureSpec[] = [
  { label: 'admitted rate', color: '--c-rate', value: (p) => p.limiter_rate },
  { label: 'learned ceiling', color: '--c-ceiling', value: (p) => p.limiter_ceiling },
  { label: 'hold line', color: '--c-hold', value: (p) => p.limiter_hold },
  {
    label: 'upstream attempts / s',
    color: '--c-demand',
    value: (p) => perSecond(p, p.requests_total - p.proxy_rate_limited_total + p.retries_total),
  },
]

export const THROTTLE_SPECS: FigureSpec[] = [
  { label: '429 frequency', color: '--c-freq', value: (p) => ratio429ByClass(p).frequency },
  { label: '429 concurrency', color: '--c-conc', value: (p) => ratio429ByClass(p).concurrency },
  { label: '429 quota', color: '--c-quota', value: (p) => ratio429ByClass(p).quota },
  { label: '429 congestion', color: '--c-cong', value: (p) => ratio429ByClass(p).congestion },
]

export const ERROR_SPECS: FigureSpec[] = [
  { label: '5xx', color: '--c-5xx', value: (p) => perMinute(p, p.requests_5xx_total) },
  { label: 'upstream errors', color: '--c-upstream-err', value: (p) => perMinute(p, p.upstream_errors_total) },
  { label: 'retries', color: '--c-retries', value: (p) => perMinute(p, p.retries_total) },
  { label: 'proxy 429', color: '--c-proxy429', value: (p) => perMinute(p, p.proxy_rate_limited_total) },
  { label: 'client closed', color: '--c-closed', value: (p) => perMinute(p, p.client_closed_total) },
]
