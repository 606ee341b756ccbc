import { getCurrentScope, onScopeDispose, shallowRef, toValue, watch, type MaybeRefOrGetter, type ShallowRef, type WatchStopHandle } from 'vue'
import { appendSnapshot } from '../lib/series'
import { ALL, COMPARE, RANGE_SECONDS, type MetricsResponse, type Range, type SnapshotEvent, type VariantChoice } from '../types'
import { useApi, type ApiClient } from './useApi'

/** Options of `useMetrics`. */
export interface UseMetricsOptions {
  api?: ApiClient
  /** Fetch at once and on every change of range or variant. Default true. */
  immediate?: boolean
}

export interface UseMetrics {
  /** The series of the current range and variant, with live points appended. */
  data: ShallowRef<MetricsResponse | null>
  loading: ShallowRef<boolean>
  error: ShallowRef<Error | null>
  /** Fetch the current range and variant again. */
  refresh(): Promise<void>
  /** Add one SSE round's points to the loaded series (no refetch), trimmed to the range. */
  append(event: SnapshotEvent): void
  /** Fetch now and again on each change of range or variant. */
  open(): void
  /** Stop following range and variant; abort a request in flight. */
  close(): void
}

/** The `variant` query parameter for a selector choice: a comparison loads every variant. */
export function apiVariant(choice: VariantChoice): string {
  return choice === COMPARE ? ALL : choice
}

/** `GET /api/metrics` for a range and variant, refetched when either changes. */
export function useMetrics(
  range: MaybeRefOrGetter<Range>,
  variant: MaybeRefOrGetter<VariantChoice>,
  options: UseMetricsOptions = {},
): UseMetrics {
  const api = options.api ?? useApi()
  const data = shallowRef<MetricsResponse | null>(null)
  const loading = shallowRef(false)
  const error = shallowRef<Error | null>(null)
  let controller: AbortController | undefined
  let stopWatch: WatchStopHandle | undefined
  // Rounds that arrive while a fetch is in flight: applied to its answer, so none is lost.
  let pending: SnapshotEvent[] = []

  async function refresh(): Promise<void> {
    controller?.abort()
    const mine = (controller = new AbortController())
    const r = toValue(range)
    const query = { range: r, variant: apiVariant(toValue(variant)) }
    loading.value = true
    pending = []
    try {
      let answer = await api.get<MetricsResponse>('api/metrics', query, mine.signal)
      for (const event of pending) answer = appendSnapshot(answer, event, RANGE_SECONDS[r])
      data.value = answer
      error.value = null
    } catch (exc) {
      if (!mine.signal.aborted) error.value = exc instanceof Error ? exc : new Error(String(exc))
    } finally {
      if (controller === mine) {
        loading.value = false
        pending = []
      }
    }
  }

  function append(event: SnapshotEvent): void {
    if (loading.value) pending.push(event)
    const current = data.value
    if (!current) return
    data.value = appendSnapshot(current, event, RANGE_SECONDS[current.range] ?? RANGE_SECONDS[toValue(range)])
  }

  function open(): void {
    if (stopWatch) return
    stopWatch = watch(
      () => [toValue(range), apiVariant(toValue(variant))],
      () => void refresh(),
      { immediate: true },
    )
  }

  function close(): void {
    stopWatch?.()
    stopWatch = undefined
    controller?.abort()
    loading.value = false
  }

  if (options.immediate ?? true) open()
  if (getCurrentScope()) onScopeDispose(close)
  return { data, loading, error, refresh, append, open, close }
}
