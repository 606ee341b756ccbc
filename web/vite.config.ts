/// <reference types="vitest/config" />
// Build into the Python package, so that `zai-proxy dashboard` serves the UI at `/`.
// `base: './'` keeps every asset URL relative: the UI works behind a path prefix.
// `npm run dev` proxies /api to a running dashboard API (DASHBOARD_API_URL, default
// http://127.0.0.1:3000; `npm run mock` starts a fake one on that port).
import vue from '@vitejs/plugin-vue'
import { fileURLToPath } from 'node:url'
import { defineConfig, type Plugin } from 'vite'
import { sourceHash } from './source-hash'

const api = process.env.DASHBOARD_API_URL ?? 'http://127.0.0.1:3000'

/** Writes `build-info.json` (the sources' hash) beside the built files. */
function buildInfo(): Plugin {
  return {
    name: 'zai-proxy-build-info',
    apply: 'build',
    generateBundle() {
      const source = sourceHash(fileURLToPath(new URL('.', import.meta.url)))
      this.emitFile({ type: 'asset', fileName: 'build-info.json', source: `${JSON.stringify({ source }, null, 2)}\n` })
    },
  }
}

export default defineConfig({
  base: './',
  plugins: [vue(), buildInfo()],
  build: {
    outDir: '../services/dashboard-api/static',
    emptyOutDir: true,
    // uPlot and Vue together are about 100 kB minified: one chunk is fine.
    chunkSizeWarningLimit: 600,
  },
  server: {
    proxy: { '/api': { target: api, changeOrigin: true } },
  },
  test: {
    environment: 'jsdom',
    setupFiles: ['./tests/setup.ts'],
    include: ['tests/**/*.test.ts'],
    restoreMocks: true,
  },
})
