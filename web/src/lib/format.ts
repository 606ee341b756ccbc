// Numbers as the dashboard shows them. Unknown figures read as an em dash.

const DASH = '—'

function known(v: number | null | undefined): v is number {
  return v !== null && v !== undefined && Number.isFinite(v)
}

/** 1234 → "1.23k", 0.5 → "0.5", 12_300_000 → "12.3M". */
export function formatNumber(v: number | null | undefined, digits = 3): string {
  if (!known(v)) return DASH
  const abs = Math.abs(v)
  const units: [number, string][] = [
    [1e9, 'G'],
    [1e6, 'M'],
    [1e3, 'k'],
  ]
  for (const [size, suffix] of units) {
    if (abs >= size) return `${precise(v / size, digits)}${suffix}`
  }
  if (abs === 0) return '0'
  if (abs < 0.01) return v.toExponential(1)
  return precise(v, digits)
}

// `digits` significant digits, but never in exponent form (999.7 → "1000", not "1.00e+3").
function precise(v: number, digits: number): string {
  const s = v.toPrecision(digits)
  return s.includes('e') ? String(Math.round(v)) : trim(s)
}

function trim(s: string): string {
  return s.includes('.') && !s.includes('e') ? s.replace(/\.?0+$/, '') : s
}

/** Seconds as a latency: 0.0123 → "12.3 ms", 1.5 → "1.5 s". */
export function formatLatency(seconds: number | null | undefined): string {
  if (!known(seconds)) return DASH
  if (seconds < 1) return `${formatNumber(seconds * 1000)} ms`
  return `${formatNumber(seconds)} s`
}

/** A ratio 0..1 as a percentage: 0.0123 → "1.23%". */
export function formatPercent(ratio: number | null | undefined, digits = 3): string {
  if (!known(ratio)) return DASH
  if (ratio === 0) return '0%'
  return `${precise(ratio * 100, digits)}%`
}

/** US dollars: 0.0042 → "$0.0042", 12.345 → "$12.35". */
export function formatUsd(usd: number | null | undefined): string {
  if (!known(usd)) return DASH
  const abs = Math.abs(usd)
  if (abs >= 1000) return `$${formatNumber(usd)}`
  if (abs >= 1 || abs === 0) return `$${usd.toFixed(2)}`
  return `$${trim(usd.toPrecision(2))}`
}

/** A duration until something: 3725 → "1h 02m", 65 → "1m 05s", -1 → "now". */
export function formatCountdown(seconds: number | null | undefined): string {
  if (!known(seconds)) return DASH
  if (seconds <= 0) return 'now'
  const s = Math.floor(seconds)
  const d = Math.floor(s / 86400)
  const h = Math.floor((s % 86400) / 3600)
  const m = Math.floor((s % 3600) / 60)
  const pad = (n: number) => String(n).padStart(2, '0')
  if (d > 0) return `${d}d ${pad(h)}h`
  if (h > 0) return `${h}h ${pad(m)}m`
  if (m > 0) return `${m}m ${pad(s % 60)}s`
  return `${s}s`
}

/** An age: 4.2 → "4 s ago". */
export function formatAge(seconds: number | null | undefined): string {
  if (!known(seconds)) return DASH
  if (seconds < 1) return 'just now'
  return `${formatCountdown(seconds)} ago`
}

/** Epoch seconds as a local wall-clock time, "14:03:25". */
export function formatClock(ts: number | null | undefined): string {
  if (!known(ts)) return DASH
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false })
}

/** A signed difference: +1.2k, −3%. */
export function formatSigned(v: number | null | undefined, format: (v: number) => string): string {
  if (!known(v)) return DASH
  if (v === 0) return '±0'
  return v > 0 ? `+${format(v)}` : `−${format(-v)}`
}
