import { describe, expect, it } from 'vitest'
import { ApiError, createApi, tokenFromPage } from '../src/composables/useApi'
import { fakeFetch } from './fixtures'

describe('useApi', () => {
  it('takes the token from the page URL and sends it as a Bearer token', async () => {
    const { fetch, calls } = fakeFetch(() => ({ ok: true }))
    const api = createApi({ baseUrl: 'https://ops.example/dash/?token=s3cret&range=1h', fetch })
    expect(api.token).toBe('s3cret')
    await api.get('api/status')
    const headers = calls[0]!.init!.headers as Record<string, string>
    expect(headers.Authorization).toBe('Bearer s3cret')
    // the token travels in the header, not in the URL of a fetch
    expect(calls[0]!.url.toString()).toBe('https://ops.example/dash/api/status')
  })

  it('puts the token and the last event id on the stream URL', () => {
    const api = createApi({ baseUrl: 'https://ops.example/dash/?token=s3cret' })
    expect(api.eventsUrl()).toBe('https://ops.example/dash/api/events?token=s3cret')
    expect(api.eventsUrl('1795750000000')).toBe('https://ops.example/dash/api/events?token=s3cret&last_event_id=1795750000000')
  })

  it('sends no Authorization header without a token', async () => {
    const { fetch, calls } = fakeFetch(() => ({}))
    const api = createApi({ baseUrl: 'http://127.0.0.1:3000/', fetch })
    await api.get('api/config')
    expect(api.token).toBeNull()
    expect(calls[0]!.init!.headers).not.toHaveProperty('Authorization')
    expect(api.eventsUrl()).toBe('http://127.0.0.1:3000/api/events')
  })

  it('keeps a path prefix and encodes the query', () => {
    const api = createApi({ baseUrl: 'https://ops.example/tools/dash/' })
    expect(api.url('/api/metrics', { range: '7d', variant: 'all', skip: undefined })).toBe(
      'https://ops.example/tools/dash/api/metrics?range=7d&variant=all',
    )
  })

  it('raises the API detail of a refusal', async () => {
    const { fetch } = fakeFetch(() => new Response(JSON.stringify({ detail: 'unknown range' }), { status: 400 }))
    const api = createApi({ baseUrl: 'http://x/', fetch })
    await expect(api.get('api/metrics')).rejects.toEqual(new ApiError(400, 'unknown range'))
  })

  it('reads the token of the page it runs in', () => {
    expect(tokenFromPage('http://x/?token=abc')).toBe('abc')
    expect(tokenFromPage('http://x/?token=')).toBeNull()
    expect(tokenFromPage('http://x/')).toBeNull()
  })
})
