"""The built web UI at `/`: a page on how to build it, then its files, SPA fallback, caching."""

from __future__ import annotations

from pathlib import Path

from tests.dashboard_api.processes import TOKEN, Dashboard

INDEX = '<!doctype html><html><body><div id="app"></div><script src="/assets/index-3f9a1c.js"></script></body></html>'  # noqa: E501
SCRIPT = "console.log('dashboard');\n"


def build(folder: Path) -> None:
    """Lay out a UI as `npm run build` does: index.html, hashed assets, a few plain files."""
    (folder / "assets").mkdir(exist_ok=True)
    (folder / "assets" / "index-3f9a1c.js").write_text(SCRIPT)
    (folder / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (folder / "index.html").write_text(INDEX)


def test_the_ui_is_served_once_built_with_spa_fallback_and_long_caching(
    main_dashboard: Dashboard, static_dir: Path
) -> None:
    # Not built yet: a page that says how to build it.
    page = main_dashboard.get("/", token=TOKEN)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "not built" in page.text and "npm ci && npm run build" in page.text
    assert main_dashboard.get("/history/7d", token=TOKEN).text == page.text

    build(static_dir)  # while the dashboard runs

    index = main_dashboard.get("/", token=TOKEN)
    assert index.text == INDEX
    assert index.headers["cache-control"] == "no-cache"
    script = main_dashboard.get("/assets/index-3f9a1c.js", token=TOKEN)
    assert script.text == SCRIPT
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
    icon = main_dashboard.get("/favicon.svg", token=TOKEN)
    assert icon.status_code == 200 and icon.headers["cache-control"] == "no-cache"

    # Routes of the single-page app get index.html; missing files do not.
    for route in ("/history", "/compare/production/canary", "/index.html"):
        answer = main_dashboard.get(route, token=TOKEN)
        assert (answer.status_code, answer.text) == (200, INDEX), route
    assert main_dashboard.get("/assets/index-000000.js", token=TOKEN).status_code == 404
    assert main_dashboard.get("/missing.css", token=TOKEN).status_code == 404
    # Unknown API paths are never the app's page.
    assert main_dashboard.get("/api/history", token=TOKEN).status_code == 404


def test_the_ui_never_serves_files_outside_its_folder(
    main_dashboard: Dashboard, static_dir: Path
) -> None:
    build(static_dir)
    secret = static_dir.parent / "secret.txt"
    secret.write_text("root:x:0:0")
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/..%2f..%2fsecret.txt"):
        answer = main_dashboard.get(path, token=TOKEN)
        assert "root:x" not in answer.text, path


def test_the_ui_needs_the_token_and_remembers_it_for_its_assets(
    main_dashboard: Dashboard, static_dir: Path
) -> None:
    build(static_dir)
    refused = main_dashboard.get("/")
    assert refused.status_code == 401
    assert "?token=" in refused.text
    opened = main_dashboard.get("/", params={"token": TOKEN})
    assert opened.text == INDEX
    cookie = {"Cookie": f"zai_dashboard_token={opened.cookies['zai_dashboard_token']}"}
    script = main_dashboard.get("/assets/index-3f9a1c.js", headers=cookie)
    assert script.text == SCRIPT
