import { getCurrentScope, onScopeDispose, shallowRef, watch, type InjectionKey, type ShallowRef } from 'vue'

export type Theme = 'light' | 'dark'

export const THEME_STORAGE_KEY = 'zai-proxy.theme'
export const ThemeKey: InjectionKey<ShallowRef<Theme>> = Symbol('zai-proxy theme')

/** Options of `useTheme`. */
export interface UseThemeOptions {
  /** Where the choice is remembered. Default: `localStorage`. */
  storage?: Pick<Storage, 'getItem' | 'setItem'> | null
  /** The element whose `data-theme` attribute the CSS follows. Default: `<html>`. */
  element?: HTMLElement
  /** The media query list of the system preference. Default: `prefers-color-scheme: dark`. */
  media?: MediaQueryList | null
}

export interface UseTheme {
  theme: ShallowRef<Theme>
  /** Switch between light and dark, and remember the choice. */
  toggle(): void
}

function systemMedia(): MediaQueryList | null {
  return typeof window !== 'undefined' && window.matchMedia ? window.matchMedia('(prefers-color-scheme: dark)') : null
}

function safeStorage(): Storage | null {
  try {
    return window.localStorage
  } catch {
    return null
  }
}

/**
 * Light or dark: the remembered choice, else the system's preference (followed live
 * until the user picks one). Sets `data-theme` on the element.
 */
export function useTheme(options: UseThemeOptions = {}): UseTheme {
  const storage = options.storage !== undefined ? options.storage : safeStorage()
  const media = options.media !== undefined ? options.media : systemMedia()
  const element = options.element ?? document.documentElement
  const saved = storage?.getItem(THEME_STORAGE_KEY)
  let chosen = saved === 'light' || saved === 'dark'
  const theme = shallowRef<Theme>(chosen ? (saved as Theme) : media?.matches ? 'dark' : 'light')

  watch(theme, (value) => (element.dataset.theme = value), { immediate: true })

  function follow(event: MediaQueryListEvent): void {
    if (!chosen) theme.value = event.matches ? 'dark' : 'light'
  }
  media?.addEventListener?.('change', follow)
  if (getCurrentScope()) onScopeDispose(() => media?.removeEventListener?.('change', follow))

  function toggle(): void {
    theme.value = theme.value === 'dark' ? 'light' : 'dark'
    chosen = true
    try {
      storage?.setItem(THEME_STORAGE_KEY, theme.value)
    } catch {
      // storage full or refused: the choice lasts for this page only
    }
  }

  return { theme, toggle }
}
