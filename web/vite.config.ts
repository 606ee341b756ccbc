/// <reference types="vitest/config" />
// Build into the Python package, so that `zai-proxy dashboard` serves the UI at `/`.
// `base: './'` keeps every asset URL relative: the UI works behind a path prefix.
// `npm run dev` proxies /api to a running dashboard API (DASHBOARD_API_URL, default
// http://127.0.0.1:3000; `npm run mock` starts a fake one on that port).
import vue from '@vitejs/plugin-vue'
import { defineConfig } from 'vite'

const api = process.env.DASHBOARD_API_URL ?? 'http://127.0.0.1:3000'

export default defineConfig({
  base: './',
  plugins: [vue()],
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
