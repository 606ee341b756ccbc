import { shallowRef, watch, type ShallowRef } from 'vue'

/**
 * A query parameter of the page URL as state: read at start (falling back to `fallback`
 * when missing or not `allowed`), written back with `history.replaceState`, so a link
 * opens the same view. Other parameters (the token) are kept.
 */
export function useUrlState<T extends string>(name: string, fallback: T, allowed?: (value: string) => boolean): ShallowRef<T> {
  const current = new URL(window.location.href).searchParams.get(name)
  const initial: T = current !== null && (!allowed || allowed(current)) ? (current as T) : fallback
  const state = shallowRef(initial) as ShallowRef<T>
  watch(state, (value) => {
    const url = new URL(window.location.href)
    url.searchParams.set(name, value)
    window.history.replaceState(window.history.state, '', url)
  })
  return state
}
