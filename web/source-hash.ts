// The hash of the UI's sources, written beside the build as `build-info.json`, so a test
// (tests/e2e/test_dashboard_browser.py computes the same) can tell whether a build in
// the static folder is of the current sources or needs `npm run build`.
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join, relative, sep } from 'node:path'

/** What the build is made of, relative to web/: folders are walked. */
export const SOURCES = ['index.html', 'package-lock.json', 'source-hash.ts', 'src', 'tsconfig.json', 'vite.config.ts']

function files(root: string, path: string): string[] {
  const full = join(root, path)
  if (!statSync(full).isDirectory()) return [path]
  return readdirSync(full).flatMap((name) => files(root, join(path, name)))
}

/** sha256 over each source file's path (with `/`) and bytes, in path order. */
export function sourceHash(root: string): string {
  const hash = createHash('sha256')
  const paths = SOURCES.flatMap((s) => files(root, s)).map((p) => relative(root, join(root, p)).split(sep).join('/'))
  for (const path of paths.sort()) {
    hash.update(`${path}\0`)
    hash.update(readFileSync(join(root, path)))
    hash.update('\0')
  }
  return hash.digest('hex')
}
