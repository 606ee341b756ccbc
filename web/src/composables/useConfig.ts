import { shallowRef, type ShallowRef } from 'vue'
import { RANGES, type ConfigResponse } from '../types'
import { useApi, type ApiClient } from './useApi'

/** Options of `useConfig`. */
export interface UseConfigOptions {
  api?: ApiClient
}

export interface UseConfig {
  /** The server's configuration; defaults until it answers. */
  config: ShallowRef<ConfigResponse>
  error: ShallowRef<Error | null>
  refresh(): Promise<void>
}

export const DEFAULT_CONFIG: ConfigResponse = {
  version: '',
  variants: ['production', 'canary'],
  ranges: [...RANGES],
  scrape_interval: 5,
  sse_heartbeat_seconds: 15,
  limiter: { configured: false },
}

/** `GET /api/config`, fetched once. */
export function useConfig(options: UseConfigOptions = {}): UseConfig {
  const api = options.api ?? useApi()
  const config = shallowRef<ConfigResponse>(DEFAULT_CONFIG)
  const error = shallowRef<Error | null>(null)

  async function refresh(): Promise<void> {
    try {
      const answer = await api.get<ConfigResponse>('api/config')
      config.value = { ...DEFAULT_CONFIG, ...answer, variants: answer.variants.length ? answer.variants : DEFAULT_CONFIG.variants }
      error.value = null
    } catch (exc) {
      error.value = exc instanceof Error ? exc : new Error(String(exc))
    }
  }

  void refresh()
  return { config, error, refresh }
}
