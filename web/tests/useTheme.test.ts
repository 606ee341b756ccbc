import { mount } from '@vue/test-utils'
import { beforeEach, describe, expect, it } from 'vitest'
import { effectScope } from 'vue'
import ThemeToggle from '../src/components/ThemeToggle.vue'
import { THEME_STORAGE_KEY, useTheme } from '../src/composables/useTheme'

function media(dark: boolean): MediaQueryList {
  return { matches: dark, addEventListener() {}, removeEventListener() {} } as unknown as MediaQueryList
}

function theme(options: Parameters<typeof useTheme>[0]) {
  return effectScope().run(() => useTheme(options))!
}

describe('useTheme', () => {
  beforeEach(() => {
    localStorage.clear()
    delete document.documentElement.dataset.theme
  })

  it('follows the system preference when nothing is remembered', () => {
    expect(theme({ media: media(true) }).theme.value).toBe('dark')
    expect(document.documentElement.dataset.theme).toBe('dark')
    expect(theme({ media: media(false) }).theme.value).toBe('light')
  })

  it('prefers the remembered choice over the system', () => {
    localStorage.setItem(THEME_STORAGE_KEY, 'light')
    expect(theme({ media: media(true) }).theme.value).toBe('light')
  })

  it('toggles, sets data-theme and remembers the choice', async () => {
    const t = theme({ media: media(false) })
    t.toggle()
    await Promise.resolve()
    expect(t.theme.value).toBe('dark')
    expect(document.documentElement.dataset.theme).toBe('dark')
    expect(localStorage.getItem(THEME_STORAGE_KEY)).toBe('dark')
    t.toggle()
    expect(localStorage.getItem(THEME_STORAGE_KEY)).toBe('light')
  })

  it('stops following the system once the user chose', () => {
    let listener: ((e: MediaQueryListEvent) => void) | undefined
    const list = { matches: false, addEventListener: (_: string, l: typeof listener) => (listener = l), removeEventListener() {} } as unknown as MediaQueryList
    const t = theme({ media: list })
    listener!({ matches: true } as MediaQueryListEvent)
    expect(t.theme.value).toBe('dark')
    t.toggle()
    listener!({ matches: true } as MediaQueryListEvent)
    expect(t.theme.value).toBe('light')
  })
})

describe('ThemeToggle', () => {
  it('offers the other theme and asks for the toggle', async () => {
    const wrapper = mount(ThemeToggle, { props: { theme: 'light' } })
    expect(wrapper.text()).toContain('Dark')
    await wrapper.trigger('click')
    expect(wrapper.emitted('toggle')).toHaveLength(1)
    await wrapper.setProps({ theme: 'dark' })
    expect(wrapper.attributes('aria-label')).toBe('Switch to the light theme')
  })
})
