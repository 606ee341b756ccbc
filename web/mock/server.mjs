// A fake dashboard API for UI development (docs/dashboard-api.md), no dependencies:
//   node mock/server.mjs [port]   (default 3000), then `npm run dev` in another shell.
// Serves generated history for two variants, a snapshot event every 5 s over SSE
// (with ids, Last-Event-ID / ?last_event_id= replay), and the built UI at / if present.
import { createReadStream, existsSync, statSync } from 'node:fs'
import { createServer } from 'node:http'
import { extname, join, normalize } from 'node:path'
import { fileURLToPath } from 'node:url'

const PORT = Number(process.argv[2] ?? process.env.PORT ?? 3000)
const STATIC = fileURLToPath(new URL('../../services/dashboard-api/static/', import.meta.url))
const RANGES = { '5m': 300, '15m': 900, '1h': 3600, '6h': 21600, '24h': 86400, '7d': 604800 }
const VARIANTS = ['production', 'canary']
const STEP = 5
// The proxy's bucket ladder (services/proxy/buckets.py): a few fixed small bounds, then
// 2^(k/8) rounded to three significant digits, finest from 1 s to 128 s.
const significant = (v) => Number(v.toPrecision(3))
const doublings = (first, last, step = 1) => {
  const out = []
  for (let k = first; k <= last; k += step) out.push(significant(2 ** (k / 8)))
  return out
}
const LADDER = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, ...doublings(-32, 0, 2), ...doublings(1, 56), ...doublings(58, 74, 2)]
const Z = { p50: 0, p95: 1.6449, p99: 2.3263 }

// erf by Abramowitz and Stegun 7.1.26 (error below 1.5e-7): enough for a mock.
function erf(x) {
  const t = 1 / (1 + 0.3275911 * Math.abs(x))
  const y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-x * x)
  return x < 0 ? -y : y
}

/** The histogram `count` log-normal observations would fill, thinned as the API sends it. */
function lognormal(count, median, sigma) {
  const buckets = LADDER.map((le) => [le, count * 0.5 * (1 + erf(Math.log(le / median) / sigma / Math.SQRT2))])
  return { count, buckets: buckets.filter(([, c], i) => c !== (i ? buckets[i - 1][1] : 0) || c !== (buckets[i + 1]?.[1] ?? count)) }
}

/** `{family}_p50 .. _p99` of a log-normal (null without observations) and its histogram. */
function latency(family, count, median, sigma) {
  const out = { [`${family}_buckets`]: lognormal(count, median, sigma) }
  for (const [name, z] of Object.entries(Z)) out[`${family}_${name}`] = count ? median * Math.exp(sigma * z) : null
  return out
}

function point(variant, ts, seconds) {
  const canary = variant === 'canary'
  const t = ts / 600
  const load = (canary ? 4 : 20) * (1 + 0.35 * Math.sin(t) + 0.1 * Math.sin(t * 7.3))
  const requests = Math.round(load * seconds)
  const r429 = Math.round(requests * (0.01 + 0.02 * Math.max(0, Math.sin(t * 1.7))))
  const r5xx = Math.round(requests * (canary ? 0.012 : 0.004))
  const r4xx = r429 + Math.round(requests * 0.01)
  const tokensIn = requests * 420
  const tokensOut = requests * 85
  const ceiling = 26 + 3 * Math.sin(t / 3)
  const probe = Math.floor(ts / seconds) % 97 === 0 ? 1 : 0
  const backoff = Math.floor(ts / seconds) % 131 === 0 ? 1 : 0
  const cost = tokensIn * 0.6e-6 + tokensOut * 2.2e-6
  const slow = canary ? 1.15 : 1
  const refused = Math.round(r429 * 0.3)
  const served = requests - refused
  return {
    ts, seconds, variant, replicas: canary ? 1 : 3,
    requests_total: requests, requests_2xx_total: requests - r4xx - r5xx, requests_4xx_total: r4xx,
    requests_429_total: r429, requests_5xx_total: r5xx, client_closed_total: Math.round(requests * 0.002),
    requests_per_s: requests / seconds, error_ratio: requests ? r5xx / requests : 0,
    ...latency('latency', served, (6 + Math.sin(t * 2)) * slow, 0.8),
    ...latency('ttfb', Math.round(served * 0.7), 0.6 * slow, 0.5),
    ...latency('refusal_wait', refused, 0.02, 1),
    tokens_in_total: tokensIn, tokens_out_total: tokensOut, tokens_cache_read_total: Math.round(tokensIn * 0.3),
    tokens_cache_write_total: Math.round(tokensIn * 0.05), tokens_reasoning_total: Math.round(tokensOut * 0.2),
    tokens_estimated_total: 0, tokens_in_per_s: tokensIn / seconds, tokens_out_per_s: tokensOut / seconds,
    cost_usd: cost, in_flight: load * 1.1, in_flight_max: load * 1.6, queued: Math.max(0, load - 22),
    workers: canary ? 64 : 192, worker_utilization: (load * 1.1) / (canary ? 64 : 192), degraded_replicas: 0,
    upstream_errors_total: r5xx + r429, upstream_429_ratio: requests ? r429 / requests : 0,
    upstream_429_frequency_total: Math.round(r429 * 0.7), upstream_429_concurrency_total: Math.round(r429 * 0.2),
    upstream_429_quota_total: 0, upstream_429_congestion_total: r429 - Math.round(r429 * 0.7) - Math.round(r429 * 0.2),
    retries_total: Math.round(r429 * 0.8), proxy_rate_limited_total: refused, refusals_total: refused,
    limiter_rate: ceiling * 0.95, limiter_ceiling: ceiling, limiter_hold: ceiling * 0.95, limiter_concurrency: 256,
    limiter_increases_total: 0, limiter_decreases_total: backoff, limiter_probes_total: probe,
    quota_used: { '5h': 0.42, weekly: 0.13 },
    quota_reset_at: { '5h': Math.ceil(ts / 18000) * 18000, weekly: Math.ceil(ts / 604800) * 604800 },
    models: { 'glm-4.6': { requests, tokens_in: tokensIn, tokens_out: tokensOut, tokens_cache_read: Math.round(tokensIn * 0.3), tokens_cache_write: 0, tokens_reasoning: 0, cost_usd: cost } },
  }
}

const stepFor = (range) => ({ '5m': 5, '15m': 5, '1h': 15, '6h': 120, '24h': 300, '7d': 3600 })[range]
const json = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify(body))
}
const now = () => Date.now() / 1000
const clients = new Set()

function metrics(url, res) {
  const range = url.searchParams.get('range') ?? '1h'
  const variant = url.searchParams.get('variant') ?? 'all'
  if (!(range in RANGES)) return json(res, 400, { detail: `unknown range ${range}` })
  const step = stepFor(range)
  const end = now()
  const start = end - RANGES[range]
  const series = {}
  const summary = {}
  for (const v of VARIANTS) {
    if (variant !== 'all' && variant !== v) continue
    const points = []
    for (let ts = Math.floor(start / step) * step; ts + Math.min(step, STEP) <= end; ts += step) points.push(point(v, ts, step))
    series[v] = points
    // Not the merge of the points the real API sends (the page derives its own from them).
    summary[v] = point(v, start, end - start)
  }
  json(res, 200, { range, variant, start, end, step, series, summary })
}

function status(res) {
  const t = now()
  const ts = Math.floor(t / STEP) * STEP - STEP
  const variants = Object.fromEntries(VARIANTS.map((v) => [v, { latest: point(v, ts, STEP), age_seconds: t - ts - STEP, stale: false }]))
  json(res, 200, { now: t, stale_after: 15, variants })
}

function round(ts) {
  return { id: String(ts * 1000), data: { ts, variants: Object.fromEntries(VARIANTS.map((v) => [v, point(v, ts, STEP)])) } }
}

function events(req, url, res) {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
  res.write(': connected\n\n') // sends the headers: the browser's EventSource opens
  const last = req.headers['last-event-id'] ?? url.searchParams.get('last_event_id')
  if (last) {
    const from = Number(last) / 1000
    const t = Math.floor(now() / STEP) * STEP - STEP
    for (let ts = Math.max(from + STEP, t - 900); ts <= t; ts += STEP) send(res, round(ts))
  }
  clients.add(res)
  req.on('close', () => clients.delete(res))
}

function send(res, { id, data }) {
  res.write(`id: ${id}\nevent: snapshot\ndata: ${JSON.stringify(data)}\n\n`)
}

setInterval(() => {
  const r = round(Math.floor(now() / STEP) * STEP - STEP)
  for (const res of clients) send(res, r)
}, STEP * 1000)
setInterval(() => {
  for (const res of clients) res.write(': heartbeat\n\n')
}, 15000)

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml' }

createServer((req, res) => {
  const url = new URL(req.url, `http://${req.headers.host}`)
  switch (url.pathname) {
    case '/api/metrics': return metrics(url, res)
    case '/api/status': return status(res)
    case '/api/events': return events(req, url, res)
    case '/api/config':
      return json(res, 200, { version: 'mock', variants: VARIANTS, ranges: Object.keys(RANGES), scrape_interval: STEP, sse_heartbeat_seconds: 15, limiter: { configured: false } })
    case '/api/limiter': return json(res, 200, { available: false, error: 'the mock has no limiter' })
    case '/healthz': return json(res, 200, { status: 'ok' })
  }
  const file = join(STATIC, normalize(url.pathname === '/' ? 'index.html' : url.pathname))
  if (file.startsWith(STATIC) && existsSync(file) && statSync(file).isFile()) {
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' })
    return createReadStream(file).pipe(res)
  }
  json(res, 404, { detail: 'not found' })
}).listen(PORT, '127.0.0.1', () => console.log(`mock dashboard API on http://127.0.0.1:${PORT}`))
