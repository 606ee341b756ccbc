/** How the wait before a reconnect grows. */
export interface BackoffOptions {
  /** The first wait (ms). Default 1000. */
  initialMs?: number
  /** The longest wait (ms). Default 30000. */
  maxMs?: number
  /** Each failed attempt multiplies the wait by this. Default 2. */
  factor?: number
  /** A random share of the wait added on top (0..1), so clients do not return in step. Default 0.2. */
  jitter?: number
}

/** The wait (ms) before reconnect attempt `attempt` (0 for the first). */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const { initialMs = 1000, maxMs = 30000, factor = 2, jitter = 0.2 } = options
  const base = Math.min(maxMs, initialMs * factor ** Math.max(0, attempt))
  return Math.round(base * (1 + jitter * random()))
}
