"""The built web UI: files from the static folder, with an index.html fallback for the SPA.

Vite names the files under ``assets/`` by their content hash, so they may be cached for a
year; ``index.html`` (which names the current hashes) and every other file must be
revalidated. A path that is not a file is a route of the single-page app and gets
``index.html``, unless it looks like a file (its last segment has a dot): a missing
script answers 404, not a page of HTML. The folder is looked at per request, so a UI
built while the dashboard runs is served without a restart.
"""

from __future__ import annotations

import html
from pathlib import Path

from starlette.responses import FileResponse, HTMLResponse, Response

HASHED_PREFIX = "assets/"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
BUILD_COMMAND = "cd web && npm ci && npm run build"

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>zai-proxy dashboard</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>The web UI is not built</h1>
<p>The dashboard API is running, but its web UI has not been built into
<code>{folder}</code>.</p>
<p>Build it (Node 20) from the repository's root, then reload this page:</p>
<pre>{command}</pre>
<p>The API answers meanwhile: <a href="api/status">api/status</a>,
<a href="api/openapi.json">api/openapi.json</a>.</p>
</body></html>
"""

UNAUTHORIZED = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>zai-proxy dashboard</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>A token is required</h1>
<p>This dashboard is protected by <code>DASHBOARD_TOKEN</code>: open it as
<code>/?token=&lt;token&gt;</code>.</p>
</body></html>
"""


class WebUI:
    """Serves the files of one built web UI folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()

    def __repr__(self) -> str:
        return f"WebUI({str(self.folder)!r})"

    @property
    def built(self) -> bool:
        """Whether the folder holds a built UI."""
        return (self.folder / "index.html").is_file()

    def response(self, path: str) -> Response:
        """The answer for a request path (without its leading slash)."""
        if not self.built:
            page = NOT_BUILT.format(folder=html.escape(str(self.folder)), command=BUILD_COMMAND)
            return HTMLResponse(page, headers={"Cache-Control": REVALIDATE})
        file = self._file(path)
        if file is not None:
            hashed = path.startswith(HASHED_PREFIX)
            cache = IMMUTABLE if hashed else REVALIDATE
            return FileResponse(file, headers={"Cache-Control": cache})
        if "." in path.rsplit("/", 1)[-1]:
            return Response("not found\n", 404, media_type="text/plain")
        return self.index()

    def index(self) -> Response:
        """The single-page app's index.html."""
        return FileResponse(self.folder / "index.html", headers={"Cache-Control": REVALIDATE})

    def _file(self, path: str) -> Path | None:
        if not path or path.endswith("/"):
            return None
        candidate = (self.folder / path).resolve()
        # No way out of the folder (``..``, symbolic links pointing elsewhere).
        if not candidate.is_relative_to(self.folder) or not candidate.is_file():
            return None
        return candidate
