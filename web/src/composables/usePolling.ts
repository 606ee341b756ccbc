import { getCurrentScope, onScopeDispose, shallowRef, type ShallowRef } from 'vue'

/** Options of `usePolling`. */
export interface UsePollingOptions {
  /** Milliseconds between two polls (counted from the end of the previous one). */
  intervalMs: number
  /** Start polling at once. Default true. */
  immediate?: boolean
}

/** A polled JSON document and its state. */
export interface UsePolling<T> {
  data: ShallowRef<T | null>
  error: ShallowRef<Error | null>
  loading: ShallowRef<boolean>
  /** When the last successful answer arrived (client clock, ms), or null. */
  updatedAt: ShallowRef<number | null>
  /** Fetch now (also done by the timer). */
  refresh(): Promise<void>
  /** Start polling. */
  open(): void
  /** Stop polling and abort a request in flight. */
  close(): void
}

/** Poll `fetcher` every `intervalMs` while open; stopped when the calling scope ends. */
export function usePolling<T>(fetcher: (signal: AbortSignal) => Promise<T>, options: UsePollingOptions): UsePolling<T> {
  const data = shallowRef<T | null>(null)
  const error = shallowRef<Error | null>(null)
  const loading = shallowRef(false)
  const updatedAt = shallowRef<number | null>(null)
  let timer: ReturnType<typeof setTimeout> | undefined
  let controller: AbortController | undefined
  let active = false

  async function refresh(): Promise<void> {
    controller?.abort()
    const mine = (controller = new AbortController())
    loading.value = true
    try {
      data.value = await fetcher(mine.signal)
      error.value = null
      updatedAt.value = Date.now()
    } catch (exc) {
      if (!mine.signal.aborted) error.value = exc instanceof Error ? exc : new Error(String(exc))
    } finally {
      if (controller === mine) loading.value = false
    }
  }

  async function tick(): Promise<void> {
    await refresh()
    if (active) timer = setTimeout(tick, options.intervalMs)
  }

  function open(): void {
    if (active) return
    active = true
    void tick()
  }

  function close(): void {
    active = false
    clearTimeout(timer)
    controller?.abort()
  }

  if (options.immediate ?? true) open()
  if (getCurrentScope()) onScopeDispose(close)
  return { data, error, loading, updatedAt, refresh, open, close }
}
