import { inject, type InjectionKey } from 'vue'

/** Options of `useApi`. */
export interface UseApiOptions {
  /**
   * The URL the API paths resolve against. Default: the page's own URL, so that the UI
   * works behind a path prefix (`/dash/` serves `/dash/api/...`).
   */
  baseUrl?: string
  /**
   * The read token (`DASHBOARD_TOKEN`). Default: the page URL's `?token=`, so a link with
   * the token keeps working for every request the page makes.
   */
  token?: string | null
  /** The fetch to use (tests pass a fake). Default: the global `fetch`. */
  fetch?: typeof fetch
}

/** An API answer other than 2xx. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string,
  ) {
    super(`HTTP ${status}: ${detail}`)
    this.name = 'ApiError'
  }
}

export interface ApiClient {
  /** The token sent with each request, or null. */
  readonly token: string | null
  /** The absolute URL of an API path with its query (the token not included). */
  url(path: string, query?: Record<string, string | undefined>): string
  /** GET a JSON document, with the token as `Authorization: Bearer`. */
  get<T>(path: string, query?: Record<string, string | undefined>, signal?: AbortSignal): Promise<T>
  /**
   * The SSE URL. EventSource cannot send headers, so the token goes in `?token=`; and
   * since a new EventSource does not send `Last-Event-ID`, the last id goes in
   * `?last_event_id=` (`RESUME_PARAM`).
   */
  eventsUrl(lastEventId?: string | null): string
}

/** The query parameter of `/api/events` that stands for the `Last-Event-ID` header. */
export const RESUME_PARAM = 'last_event_id'

export const ApiKey: InjectionKey<ApiClient> = Symbol('zai-proxy api')

function pageUrl(): string {
  return typeof document !== 'undefined' ? document.baseURI : 'http://localhost/'
}

/** The token in the page URL's `?token=`, or null. */
export function tokenFromPage(href: string = pageUrl()): string | null {
  return new URL(href).searchParams.get('token') || null
}

/** An API client: the one provided by an ancestor (`ApiKey`) or a new one from `options`. */
export function useApi(options: UseApiOptions = {}): ApiClient {
  const provided = Object.keys(options).length === 0 ? inject(ApiKey, null) : null
  return provided ?? createApi(options)
}

/** A new API client (see `UseApiOptions`). */
export function createApi(options: UseApiOptions = {}): ApiClient {
  const base = options.baseUrl ?? pageUrl()
  const token = options.token !== undefined ? options.token : tokenFromPage(base)
  const doFetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init))

  function url(path: string, query: Record<string, string | undefined> = {}): string {
    // Relative to the page (no leading slash), so a path prefix is kept.
    const u = new URL(path.replace(/^\//, ''), base)
    u.search = ''
    for (const [key, value] of Object.entries(query)) if (value !== undefined) u.searchParams.set(key, value)
    return u.toString()
  }

  async function get<T>(path: string, query?: Record<string, string | undefined>, signal?: AbortSignal): Promise<T> {
    const headers: Record<string, string> = { Accept: 'application/json' }
    if (token) headers.Authorization = `Bearer ${token}`
    const response = await doFetch(url(path, query), { headers, signal })
    if (!response.ok) {
      let detail = response.statusText
      try {
        const body = (await response.json()) as { detail?: unknown }
        if (body && typeof body.detail === 'string') detail = body.detail
      } catch {
        // not JSON: keep the status text
      }
      throw new ApiError(response.status, detail)
    }
    return (await response.json()) as T
  }

  function eventsUrl(lastEventId?: string | null): string {
    return url('api/events', { token: token ?? undefined, [RESUME_PARAM]: lastEventId ?? undefined })
  }

  return { token, url, get, eventsUrl }
}
