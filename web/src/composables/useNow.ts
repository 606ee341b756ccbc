import { getCurrentScope, onScopeDispose, shallowRef, type ShallowRef } from 'vue'

/** The current time (ms), updated every `intervalMs`: for ages and countdowns. */
export function useNow(intervalMs = 1000): ShallowRef<number> {
  const now = shallowRef(Date.now())
  const timer = setInterval(() => (now.value = Date.now()), intervalMs)
  if (getCurrentScope()) onScopeDispose(() => clearInterval(timer))
  return now
}
