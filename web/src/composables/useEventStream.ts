import { getCurrentScope, onScopeDispose, shallowRef, type ShallowRef } from 'vue'
import { backoffDelay, type BackoffOptions } from '../lib/backoff'
import type { SnapshotEvent } from '../types'
import { useApi, type ApiClient } from './useApi'

/**
 * The stream's state: `connecting` (first attempt), `open`, `reconnecting` (waiting to
 * retry or retrying after a failure) and `closed` (by `close()` or out of retries).
 */
export type StreamState = 'connecting' | 'open' | 'reconnecting' | 'closed'

/** The part of the EventSource constructor the stream uses (tests pass a fake). */
export type EventSourceFactory = new (url: string) => EventSource

/** Options of `useEventStream`. */
export interface UseEventStreamOptions {
  api?: ApiClient
  /** The stream URL for a last event id. Default: the API's `/api/events`. */
  url?: (lastEventId: string | null) => string
  /** Called with each `snapshot` event, in order. */
  onSnapshot?: (event: SnapshotEvent, id: string | null) => void
  /** How the wait between reconnects grows (default 1 s doubling to 30 s, 20% jitter). */
  backoff?: BackoffOptions
  /** Give up after this many failed attempts in a row. Default: never. */
  maxRetries?: number
  /** Connect at once. Default true. */
  immediate?: boolean
  /** The EventSource class. Default: the browser's. */
  EventSource?: EventSourceFactory
  /** Random numbers for the jitter (tests pass a constant). */
  random?: () => number
}

export interface UseEventStream {
  state: ShallowRef<StreamState>
  /** The id of the last snapshot received: where a reconnect resumes. */
  lastEventId: ShallowRef<string | null>
  /** The last snapshot received. */
  lastSnapshot: ShallowRef<SnapshotEvent | null>
  /** When the last snapshot arrived (client clock, ms). */
  lastMessageAt: ShallowRef<number | null>
  /** Failed attempts since the stream was last open. */
  retries: ShallowRef<number>
  /** When the next attempt starts (client clock, ms), while reconnecting. */
  nextAttemptAt: ShallowRef<number | null>
  error: ShallowRef<Error | null>
  /** Connect (no-op while connected or connecting). */
  open(): void
  /** Disconnect and stop reconnecting. */
  close(): void
}

/**
 * The dashboard's live stream (`GET /api/events`): each collector round as a `snapshot`.
 *
 * On an error the EventSource is closed and a new one made after an exponential backoff,
 * rather than left to the browser's fixed-delay retry: the server may be down for a
 * while, and many dashboards should not return in step. A new EventSource does not send
 * `Last-Event-ID`, so the last id rides along as `?last_event_id=`; the server then replays
 * the rounds missed meanwhile.
 */
export function useEventStream(options: UseEventStreamOptions = {}): UseEventStream {
  const api = options.url ? null : (options.api ?? useApi())
  const url = options.url ?? ((id: string | null) => api!.eventsUrl(id))
  const Source = options.EventSource ?? globalThis.EventSource
  const maxRetries = options.maxRetries ?? Infinity

  const state = shallowRef<StreamState>('closed')
  const lastEventId = shallowRef<string | null>(null)
  const lastSnapshot = shallowRef<SnapshotEvent | null>(null)
  const lastMessageAt = shallowRef<number | null>(null)
  const retries = shallowRef(0)
  const nextAttemptAt = shallowRef<number | null>(null)
  const error = shallowRef<Error | null>(null)
  let source: EventSource | null = null
  let timer: ReturnType<typeof setTimeout> | undefined

  function onSnapshot(message: MessageEvent<string>): void {
    let event: SnapshotEvent
    try {
      event = JSON.parse(message.data) as SnapshotEvent
    } catch {
      error.value = new Error('a snapshot event that is not JSON')
      return
    }
    if (message.lastEventId) lastEventId.value = message.lastEventId
    lastSnapshot.value = event
    lastMessageAt.value = Date.now()
    options.onSnapshot?.(event, lastEventId.value)
  }

  function connect(): void {
    timer = undefined
    nextAttemptAt.value = null
    state.value = retries.value > 0 ? 'reconnecting' : 'connecting'
    const es = new Source(url(lastEventId.value))
    source = es
    es.addEventListener('open', () => {
      if (source !== es) return
      state.value = 'open'
      retries.value = 0
      error.value = null
    })
    es.addEventListener('snapshot', (message) => {
      if (source === es) onSnapshot(message as MessageEvent<string>)
    })
    es.addEventListener('error', () => {
      if (source !== es) return
      es.close()
      source = null
      error.value = new Error('the event stream failed')
      if (retries.value >= maxRetries) {
        state.value = 'closed'
        return
      }
      const delay = backoffDelay(retries.value, options.backoff, options.random)
      retries.value += 1
      state.value = 'reconnecting'
      nextAttemptAt.value = Date.now() + delay
      timer = setTimeout(connect, delay)
    })
  }

  function open(): void {
    if (source || timer !== undefined) return
    retries.value = 0
    connect()
  }

  function close(): void {
    clearTimeout(timer)
    timer = undefined
    source?.close()
    source = null
    nextAttemptAt.value = null
    state.value = 'closed'
  }

  if (options.immediate ?? true) open()
  if (getCurrentScope()) onScopeDispose(close)
  return { state, lastEventId, lastSnapshot, lastMessageAt, retries, nextAttemptAt, error, open, close }
}
