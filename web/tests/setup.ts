// jsdom lacks what uPlot and the theme need: matchMedia, and a 2D canvas context (uPlot
// draws on it; the drawing is checked in the real browser by the end-to-end test).
import { vi } from 'vitest'

if (!window.matchMedia) {
  Object.defineProperty(window, 'matchMedia', {
    configurable: true,
    writable: true,
    value: vi.fn((query: string) => ({
      matches: false,
      media: query,
      onchange: null,
      addEventListener: vi.fn(),
      removeEventListener: vi.fn(),
      addListener: vi.fn(),
      removeListener: vi.fn(),
      dispatchEvent: vi.fn(),
    })),
  })
}

// Every method of a CanvasRenderingContext2D as a no-op, every property settable.
function fakeContext(canvas: HTMLCanvasElement): CanvasRenderingContext2D {
  const target: Record<string | symbol, unknown> = { canvas }
  return new Proxy(target, {
    get(t, key) {
      if (key in t) return t[key]
      if (key === 'measureText') return (text: string) => ({ width: text.length * 6 })
      return () => undefined
    },
    set(t, key, value) {
      t[key] = value
      return true
    },
  }) as unknown as CanvasRenderingContext2D
}

HTMLCanvasElement.prototype.getContext = function (this: HTMLCanvasElement) {
  return fakeContext(this)
} as unknown as typeof HTMLCanvasElement.prototype.getContext

// uPlot builds its series paths as Path2D objects.
if (typeof globalThis.Path2D === 'undefined') {
  class FakePath2D {
    addPath(): void {}
    moveTo(): void {}
    lineTo(): void {}
    bezierCurveTo(): void {}
    quadraticCurveTo(): void {}
    arc(): void {}
    arcTo(): void {}
    rect(): void {}
    closePath(): void {}
  }
  globalThis.Path2D = FakePath2D as unknown as typeof Path2D
}
