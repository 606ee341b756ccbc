import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { effectScope } from 'vue'
import { useEventStream, type EventSourceFactory, type UseEventStreamOptions } from '../src/composables/useEventStream'
import type { SnapshotEvent } from '../src/types'
import { FakeEventSource, T0, makeRound } from './fixtures'

function stream(options: Partial<UseEventStreamOptions> = {}) {
  const scope = effectScope()
  const received: [SnapshotEvent, string | null][] = []
  const s = scope.run(() =>
    useEventStream({
      url: (id) => `http://dash.test/api/events${id ? `?last_event_id=${id}` : ''}`,
      EventSource: FakeEventSource as unknown as EventSourceFactory,
      random: () => 0,
      onSnapshot: (event, id) => received.push([event, id]),
      ...options,
    }),
  )!
  return { s, received, scope }
}

describe('useEventStream', () => {
  beforeEach(() => {
    FakeEventSource.reset()
    vi.useFakeTimers()
  })
  afterEach(() => vi.useRealTimers())

  it('connects at once and is open when the server answers', () => {
    const { s } = stream()
    expect(s.state.value).toBe('connecting')
    FakeEventSource.last.open()
    expect(s.state.value).toBe('open')
  })

  it('hands every snapshot event on in order, with its id', () => {
    const { s, received } = stream()
    FakeEventSource.last.open()
    FakeEventSource.last.snapshot(makeRound(T0))
    FakeEventSource.last.snapshot(makeRound(T0 + 5))
    expect(received.map(([event, id]) => [event.ts, id])).toEqual([
      [T0, `${T0 * 1000}`],
      [T0 + 5, `${(T0 + 5) * 1000}`],
    ])
    expect(s.lastEventId.value).toBe(`${(T0 + 5) * 1000}`)
    expect(s.lastSnapshot.value?.ts).toBe(T0 + 5)
  })

  it('reconnects with exponential backoff, resuming after the last event id', () => {
    const { s } = stream({ backoff: { initialMs: 1000, maxMs: 8000 } })
    FakeEventSource.last.open()
    FakeEventSource.last.snapshot(makeRound(T0))
    FakeEventSource.last.fail()
    expect(FakeEventSource.instances[0]!.closed).toBe(true)
    expect(s.state.value).toBe('reconnecting')

    // attempts after 1 s, 2 s, 4 s, 8 s, 8 s: each fails at once
    const waits: number[] = []
    for (let attempt = 0; attempt < 5; attempt++) {
      const before = FakeEventSource.instances.length
      let waited = 0
      while (FakeEventSource.instances.length === before) {
        vi.advanceTimersByTime(100)
        waited += 100
      }
      waits.push(waited)
      expect(FakeEventSource.last.url).toBe(`http://dash.test/api/events?last_event_id=${T0 * 1000}`)
      expect(s.state.value).toBe('reconnecting')
      FakeEventSource.last.fail()
    }
    expect(waits).toEqual([1000, 2000, 4000, 8000, 8000])
    expect(s.retries.value).toBe(6)
  })

  it('is open again after a reconnect, and starts the backoff over', () => {
    const { s } = stream()
    FakeEventSource.last.open()
    FakeEventSource.last.fail()
    vi.advanceTimersByTime(1000)
    FakeEventSource.last.fail()
    vi.advanceTimersByTime(2000)
    FakeEventSource.last.open()
    expect(s.state.value).toBe('open')
    expect(s.retries.value).toBe(0)
    FakeEventSource.last.fail()
    const before = FakeEventSource.instances.length
    vi.advanceTimersByTime(1000)
    expect(FakeEventSource.instances.length).toBe(before + 1)
  })

  it('tells when the next attempt starts while reconnecting', () => {
    vi.setSystemTime(new Date(T0 * 1000))
    const { s } = stream()
    FakeEventSource.last.fail()
    expect(s.nextAttemptAt.value).toBe(T0 * 1000 + 1000)
  })

  it('adds jitter on top of the backoff', () => {
    const { s } = stream({ random: () => 0.5, backoff: { initialMs: 1000, jitter: 0.2 } })
    FakeEventSource.last.fail()
    const before = FakeEventSource.instances.length
    vi.advanceTimersByTime(1099)
    expect(FakeEventSource.instances.length).toBe(before)
    vi.advanceTimersByTime(1)
    expect(FakeEventSource.instances.length).toBe(before + 1)
    expect(s.state.value).toBe('reconnecting')
  })

  it('gives up after maxRetries failures in a row', () => {
    const { s } = stream({ maxRetries: 2 })
    FakeEventSource.last.fail()
    vi.advanceTimersByTime(1000)
    FakeEventSource.last.fail()
    vi.advanceTimersByTime(2000)
    FakeEventSource.last.fail()
    expect(s.state.value).toBe('closed')
    vi.advanceTimersByTime(60_000)
    expect(FakeEventSource.instances).toHaveLength(3)
  })

  it('stops reconnecting when closed, and closes with its scope', () => {
    const { s, scope } = stream()
    FakeEventSource.last.fail()
    s.close()
    vi.advanceTimersByTime(60_000)
    expect(FakeEventSource.instances).toHaveLength(1)
    expect(s.state.value).toBe('closed')

    s.open()
    expect(FakeEventSource.instances).toHaveLength(2)
    scope.stop()
    expect(FakeEventSource.last.closed).toBe(true)
  })

  it('ignores events of an EventSource it has replaced', () => {
    const { received } = stream()
    const first = FakeEventSource.last
    first.fail()
    first.snapshot(makeRound(T0))
    expect(received).toHaveLength(0)
  })

  it('keeps going past a malformed event', () => {
    const { s, received } = stream()
    const source = FakeEventSource.last
    source.open()
    ;(source as unknown as { dispatch(type: string, e: Event): void }).dispatch('snapshot', new MessageEvent('snapshot', { data: '{oops' }))
    source.snapshot(makeRound(T0))
    expect(received).toHaveLength(1)
    expect(s.state.value).toBe('open')
  })
})
