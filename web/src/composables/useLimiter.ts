import type { ShallowRef } from 'vue'
import type { LimiterResponse } from '../types'
import { useApi, type ApiClient } from './useApi'
import { usePolling } from './usePolling'

/** Options of `useLimiter`. */
export interface UseLimiterOptions {
  api?: ApiClient
  /** Milliseconds between two polls of `/api/limiter`. Default 5000. */
  intervalMs?: number
  /** Start polling at once. Default true. */
  immediate?: boolean
}

export interface UseLimiter {
  /** The limiter's state, or why it is unavailable. */
  limiter: ShallowRef<LimiterResponse | null>
  error: ShallowRef<Error | null>
  refresh(): Promise<void>
  open(): void
  close(): void
}

/** The limiter control plane's state (`GET /api/limiter`), polled. */
export function useLimiter(options: UseLimiterOptions = {}): UseLimiter {
  const api = options.api ?? useApi()
  const polling = usePolling((signal) => api.get<LimiterResponse>('api/limiter', undefined, signal), {
    intervalMs: options.intervalMs ?? 5000,
    immediate: options.immediate,
  })
  return {
    limiter: polling.data,
    error: polling.error,
    refresh: polling.refresh,
    open: polling.open,
    close: polling.close,
  }
}
