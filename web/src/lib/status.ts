import type { StatusResponse } from '../types'

/** How old a variant's newest point is now, and whether that is too old. */
export interface Freshness {
  ageSeconds: number | null
  stale: boolean
  /** The end of the newest point (epoch s), or null. */
  latestAt: number | null
}

/**
 * Each variant's freshness at `nowMs` (client clock): the server's age plus the time since
 * the answer arrived, so a skewed browser clock does not matter. Stale past `stale_after`,
 * or when the server says so and nothing newer came since.
 */
export function freshness(status: StatusResponse | null, receivedAtMs: number | null, nowMs: number): Record<string, Freshness> {
  const out: Record<string, Freshness> = {}
  if (!status) return out
  const since = receivedAtMs === null ? 0 : Math.max(0, (nowMs - receivedAtMs) / 1000)
  for (const [variant, v] of Object.entries(status.variants)) {
    const latestAt = v.latest ? v.latest.ts + v.latest.seconds : null
    const age = v.age_seconds === null ? null : v.age_seconds + since
    out[variant] = { ageSeconds: age, stale: v.latest === null || v.stale || (age !== null && age > status.stale_after), latestAt }
  }
  return out
}
