import type { ShallowRef } from 'vue'
import type { SnapshotEvent, StatusResponse } from '../types'
import { useApi, type ApiClient } from './useApi'
import { usePolling } from './usePolling'

/** Options of `useStatus`. */
export interface UseStatusOptions {
  api?: ApiClient
  /** Milliseconds between two polls of `/api/status`. Default 5000. */
  intervalMs?: number
  /** Start polling at once. Default true. */
  immediate?: boolean
}

export interface UseStatus {
  /** The latest status; snapshot events update it between polls. */
  status: ShallowRef<StatusResponse | null>
  error: ShallowRef<Error | null>
  /** When `status` last changed (client clock, ms): ages count on from there. */
  receivedAt: ShallowRef<number | null>
  /** Take a snapshot event's points as the latest, without waiting for the next poll. */
  apply(event: SnapshotEvent): void
  refresh(): Promise<void>
  open(): void
  close(): void
}

/** The latest point of each variant and its staleness: polled, and fed by the stream. */
export function useStatus(options: UseStatusOptions = {}): UseStatus {
  const api = options.api ?? useApi()
  const polling = usePolling((signal) => api.get<StatusResponse>('api/status', undefined, signal), {
    intervalMs: options.intervalMs ?? 5000,
    immediate: options.immediate,
  })

  function apply(event: SnapshotEvent): void {
    const now = Date.now() / 1000
    const current = polling.data.value
    const variants = { ...current?.variants }
    for (const [variant, point] of Object.entries(event.variants)) {
      const known = variants[variant]?.latest
      if (known && known.ts > point.ts) continue
      variants[variant] = { latest: point, age_seconds: Math.max(0, now - (point.ts + point.seconds)), stale: false }
    }
    polling.data.value = { now, stale_after: current?.stale_after ?? 15, variants }
    polling.updatedAt.value = Date.now()
  }

  return {
    status: polling.data,
    error: polling.error,
    receivedAt: polling.updatedAt,
    apply,
    refresh: polling.refresh,
    open: polling.open,
    close: polling.close,
  }
}
