"""The web UI in a real headless Chromium, against a real dashboard process.

The dashboard (`python -m zai_proxy dashboard`) reads a SQLite database seeded with eight
days of two variants' history, asks a real limiter for its state and wants a read token;
the page is opened with `?token=`, as an operator would. New collector rounds are written
into the database while the page is open, and the dashboard is stopped and started again
on its port to see the page reconnect.

Chromium is Debian's (`apt-get install -y chromium`: browser downloads are impossible
here), driven by Playwright with its `executable_path`. Under CI a missing browser fails
the test; elsewhere it skips. The UI is built (`npm ci && npm run build` in web/) unless
`services/dashboard-api/static/` holds a build of the current sources (its
`build-info.json` names their hash, see web/source-hash.ts). Screenshots, light and dark, at
desktop and phone width, go to a temporary folder, or to `DASHBOARD_SCREENSHOT_DIR`
(`DASHBOARD_SCREENSHOT_DIR=docs/img` refreshes the ones docs/dashboard.md shows).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from tests.collector.processes import Process, limiter
from tests.dashboard_api.processes import ADMIN_TOKEN, Dashboard, RoundWriter, dashboard, ms
from tests.dashboard_api.seed import INTERVAL, seed_history

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
STATIC = ROOT / "services" / "dashboard-api" / "static"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
SCREENSHOTS = Path(
    os.environ.get("DASHBOARD_SCREENSHOT_DIR")
    or tempfile.mkdtemp(prefix="zai-dashboard-screenshots-")
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "e2e-read-token-0123456789abcdef"
PANELS = ("requests", "latency", "tokens", "cost", "concurrency", "errors", "limiter")
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 20_000

T = TypeVar("T")
# The first test also builds the UI when needed (npm ci and vite: up to a minute or two).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def off_loop(call: Callable[[], T]) -> T:
    """Run ``call`` in another thread: Playwright's sync API keeps an event loop running
    in this one, and the database helpers start their own with ``asyncio.run``."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


class Rounds:
    """Writes the next collector rounds, as a running collector would (see ``off_loop``)."""

    def __init__(self, writer: RoundWriter) -> None:
        self.writer = writer

    def write(self, count: int = 1) -> list[float]:
        return off_loop(lambda: self.writer.write(count))

    def catch_up(self) -> list[float]:
        return off_loop(self.writer.catch_up)


def _unavailable(reason: str) -> NoReturn:
    # CI must run this test: a missing browser or toolchain is a failure there.
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser test: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium_path() -> Path:
    """Debian's Chromium, or a skip (a failure under CI)."""
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    return CHROMIUM


def source_hash(web: Path = WEB) -> str:
    """The hash that web/source-hash.ts writes into build-info.json, of the same files."""
    listed = re.search(r"SOURCES = \[([^\]]*)\]", (web / "source-hash.ts").read_text())
    assert listed, "web/source-hash.ts lists no SOURCES"
    paths: list[str] = []
    for name in re.findall(r"'([^']+)'", listed.group(1)):
        path = web / name
        if path.is_dir():
            paths += [f.relative_to(web).as_posix() for f in path.rglob("*") if f.is_file()]
        else:
            paths.append(name)
    digest = hashlib.sha256()
    for name in sorted(paths):
        digest.update(f"{name}\0".encode())
        digest.update((web / name).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def built_from_sources(static: Path = STATIC) -> bool:
    """Whether the static folder holds a build of the current web/ sources."""
    try:
        info = json.loads((static / "build-info.json").read_text())
    except (OSError, ValueError):
        return False
    return (static / "index.html").is_file() and info.get("source") == source_hash()


@pytest.fixture(scope="module")
def built_ui() -> Path:
    """The built web UI in the Python package's static folder, (re)built unless current."""
    if not built_from_sources():
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("the web UI is not built and npm is missing (Node 20 and npm build it)")
        for step in (["ci", "--no-audit", "--no-fund"], ["run", "build"]):
            done = subprocess.run(
                [str(npm), *step], cwd=WEB, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, f"npm {' '.join(step)} failed:\n{done.stdout}{done.stderr}"
        assert built_from_sources(), "npm run build left no build-info.json of these sources"
    return STATIC


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, RoundWriter]:
    """Eight days of history for production and canary, up to now, and a round writer."""
    url = f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'rollups.db'}"
    summary = off_loop(lambda: seed_history(url, time.time(), hours=192))
    return url, RoundWriter(url, last=summary.end - INTERVAL)


@pytest.fixture(scope="module")
def limiter_process() -> Iterator[Process]:
    """A real limiter, so that the limiter panel shows its state."""
    process = limiter({"LIMITER_ADMIN_TOKEN": ADMIN_TOKEN})
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def server(
    built_ui: Path, database: tuple[str, RoundWriter], limiter_process: Process
) -> Iterator[Dashboard]:
    """`zai-proxy dashboard` with a read token, over the seeded database."""
    process = dashboard(
        {
            "DATABASE_URL": database[0],
            "DASHBOARD_TOKEN": TOKEN,
            "DASHBOARD_POLL_INTERVAL": "0.2",
            "LIMITER_URL": limiter_process.url,
            "LIMITER_ADMIN_TOKEN": ADMIN_TOKEN,
        }
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def rounds(database: tuple[str, RoundWriter]) -> Rounds:
    """Writes the next collector rounds, as a running collector would."""
    return Rounds(database[1])


@pytest.fixture(scope="module")
def browser(chromium_path: Path) -> Iterator[Any]:
    """Headless Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium_path), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, server: Dashboard, rounds: Rounds) -> Iterator[Any]:
    """The dashboard in a fresh light-themed page at desktop width, live and fresh."""
    context = browser.new_context(viewport=DESKTOP, color_scheme="light")
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    rounds.catch_up()
    open_dashboard(opened, server)
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"errors in the page: {errors}"


def open_dashboard(page: Any, server: Dashboard, query: str = "") -> None:
    """Load the page with the token and wait until it is live and its charts are drawn."""
    page.goto(f"{server.url}/?token={TOKEN}{query}")
    wait_live(page)
    page.wait_for_selector('.app[data-loading="false"][data-range]:not([data-range=""])')
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid=time-chart]')]
                 .every((c) => Number(c.dataset.values) > 0)""",
        timeout=WAIT_MS,
    )


def wait_live(page: Any) -> None:
    page.wait_for_selector('[data-testid=connection-state][data-state="open"]', timeout=WAIT_MS)


# Counts, per chart, the canvas pixels drawn in one of the chart's line colours (the
# legend swatches): axes and grid are in other colours, so only plotted data counts.
DRAWN_PIXELS = """
(panel) => [...panel.querySelectorAll('[data-testid=time-chart]')].map((chart) => {
  const rgb = (s) => s.match(/\\d+/g).slice(0, 3).map(Number)
  const colours = [...chart.querySelectorAll('.time-chart__swatch')]
    .map((s) => rgb(getComputedStyle(s).backgroundColor))
  const canvas = chart.querySelector('canvas')
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data
  let drawn = 0
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] < 200) continue
    for (const [r, g, b] of colours) {
      if (Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) < 40) {
        drawn++
        break
      }
    }
  }
  return drawn
})
"""

CANVAS_HASH = """
() => [...document.querySelectorAll('[data-testid=time-chart] canvas')].map((c) => c.toDataURL())
"""


def canvases(page: Any) -> str:
    """A digest of every chart's pixels."""
    return hashlib.sha256("".join(page.evaluate(CANVAS_HASH)).encode()).hexdigest()


def last_update(page: Any) -> tuple[float, str]:
    """The status bar's last update time and the last event id received."""
    element = page.locator("[data-testid=last-update]")
    ts = float(element.get_attribute("data-ts") or 0)
    return ts, element.get_attribute("data-event-id") or ""


def wait_event(page: Any, event_id: int) -> None:
    """Wait until the page has received the SSE event ``event_id`` (or a later one)."""
    page.wait_for_function(
        "(id) => Number(document.querySelector('[data-testid=last-update]').dataset.eventId) >= id",
        arg=event_id,
        timeout=WAIT_MS,
    )


def background(page: Any) -> str:
    """The page's background colour."""
    return str(page.evaluate("getComputedStyle(document.body).backgroundColor"))


def assert_one_column(page: Any, width: int) -> None:
    """Every panel as wide as the first and at its left edge; nothing wider than the page."""
    boxes = [page.locator(f"[data-testid=panel-{name}]").bounding_box() for name in PANELS]
    first = boxes[0]
    for box in boxes:
        assert abs(box["x"] - first["x"]) < 1 and abs(box["width"] - first["width"]) < 1
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_every_panel_draws_its_data_and_the_status_bar_shows_numbers(page: Any) -> None:
    for name in PANELS:
        panel = page.locator(f"[data-testid=panel-{name}]")
        drawn = page.evaluate(DRAWN_PIXELS, panel.element_handle())
        assert drawn and all(n > 50 for n in drawn), f"{name}: line pixels per chart {drawn}"
        figures = panel.locator("[data-figure]")
        assert figures.count() > 0
        refused = None
        for kind, value in figures.evaluate_all(
            "(els) => els.map((e) => [e.dataset.name ?? '', e.dataset.value])"
        ):
            if kind == "refusals":
                refused = float(value)
            if kind == "refusalWaitP95" and refused == 0:
                # A variant the proxy refused nothing of has no refusal wait (the seeded
                # history has no refusals); each wait follows its variant's count.
                assert value == "", f"{name}: a refusal wait {value!r} without refusals"
                continue
            assert value != "" and float(value) == float(value), f"{name}: figure {value!r}"

    headline = page.locator("[data-testid=headline] [data-figure]")
    values = headline.evaluate_all("(els) => els.map((e) => e.dataset.value)")
    assert len(values) == 12  # six figures for each of the two variants
    assert all(float(v) >= 0 for v in values)
    assert page.locator("[data-testid=headline] .figure__value").first.inner_text()[0].isdigit()
    assert page.locator("[data-testid=stale-warning]").count() == 0

    models = page.locator("[data-testid=model-table] tbody tr")
    assert models.count() == 2 and "glm-4.6" in models.first.inner_text()
    resets = page.locator("[data-testid=quota-reset]").all_inner_texts()
    assert len(resets) == 2 and all("resets in" in r and "—" not in r for r in resets)
    limiter_chart = page.locator("[data-testid=panel-limiter] [data-testid=time-chart]").first
    markers = int(limiter_chart.get_attribute("data-markers") or 0)
    assert markers >= 6  # a probe and a back-off every ten minutes over the hour
    assert "leader" in page.locator("[data-testid=limiter-state]").inner_text()


def test_switching_range_and_variant_redraws_the_charts(page: Any) -> None:
    before = canvases(page)
    page.locator('[data-testid=select-range] [data-value="6h"]').click()
    page.wait_for_selector('.app[data-range="6h"][data-loading="false"]')
    page.wait_for_timeout(300)  # one frame for uPlot to draw
    after_range = canvases(page)
    assert after_range != before
    assert "range=6h" in page.url and f"token={TOKEN}" in page.url

    page.locator('[data-testid=select-variant] [data-value="canary"]').click()
    page.wait_for_selector('.app[data-variant="canary"][data-loading="false"]')
    page.wait_for_function(
        "() => document.querySelector('[data-testid=time-chart]').dataset.lines === '4'"
    )
    page.wait_for_timeout(300)
    assert canvases(page) != after_range
    assert page.locator("[data-testid=headline] .headline").count() == 1

    page.locator('[data-testid=select-variant] [data-value="compare"]').click()
    page.wait_for_selector('.app[data-variant="compare"][data-loading="false"]')
    table = page.locator("[data-testid=comparison-table]")
    rate = table.locator('tr[data-key="requestsPerSecond"]')
    cells = rate.locator("td").evaluate_all("(tds) => tds.map((td) => td.dataset.value)")
    production, canary = float(cells[0]), float(cells[1])
    difference = float(rate.locator("[data-diff]").get_attribute("data-value") or "nan")
    assert production > canary > 0
    assert difference == pytest.approx(canary - production)


def wait_until(epoch: float) -> None:
    """Sleep until the wall clock reads ``epoch``."""
    time.sleep(max(0.0, epoch - time.time()))


def figure(page: Any, variant: str, name: str) -> tuple[float, str]:
    """A status bar headline figure of ``variant``: its value and how it reads."""
    element = page.locator(
        f'[data-testid=headline] .headline[data-variant="{variant}"] [data-name="{name}"]'
    )
    return float(element.get_attribute("data-value") or "nan"), element.locator(
        ".figure__value"
    ).inner_text()


def readout(page: Any, panel: str, line: str) -> tuple[float, str]:
    """A line's value in the readout above a panel's first chart, and how it reads."""
    item = page.locator(
        f'[data-testid=panel-{panel}] [data-testid=chart-readout] [data-line="{line}"]'
    ).first
    return float(item.get_attribute("data-value") or "nan"), item.locator(
        ".time-chart__value"
    ).inner_text()


def readout_at(page: Any, panel: str) -> str:
    """What the readout above a panel's first chart shows: ``range`` or a point's time."""
    chart = page.locator(f"[data-testid=panel-{panel}] [data-testid=chart-readout]").first
    return chart.get_attribute("data-at") or ""


def open_between_rounds(page: Any, server: Dashboard, rounds: Rounds, query: str) -> Any:
    """Open the page with ``query`` between two rounds; the ``/api/metrics`` it fetched."""
    for _ in range(3):
        # Every round written has started by the page's fetch (the API answers rows that
        # start before now), and the next round ends after it (else the page takes it
        # as counted in the fetched buckets).
        rounds.catch_up()
        wait_until(rounds.writer.last + 0.2)
        with page.expect_response(lambda r: "/api/metrics?" in r.url) as answer:
            open_dashboard(page, server, query)
        fetched = answer.value.json()
        if rounds.writer.last + 2 * INTERVAL > fetched["end"]:
            return fetched
    pytest.fail("the page's fetch kept ending after the next round")


def test_the_headline_and_the_chart_show_one_p95_for_a_range(
    page: Any, server: Dashboard, rounds: Rounds
) -> None:
    """The status bar's p95 over the range is the latency chart's p95 over the range, and
    both are the API's summary of the range (the collector's quantile of the merged
    histograms); a live round merged into the chart's last bucket reads as the API's
    bucket does."""
    fetched = open_between_rounds(page, server, rounds, "&range=1h&variant=all")

    assert readout_at(page, "latency") == "range"
    for variant in ("production", "canary"):
        summary = fetched["summary"][variant]["latency_p95"]
        headline = figure(page, variant, "latencyP95")
        chart = readout(page, "latency", f"p95 · {variant}")
        assert headline == chart
        assert headline[0] == pytest.approx(summary, rel=1e-9)
        panel = page.locator(
            f'[data-testid=panel-latency] [data-figure][data-name="latencyP95"]'
            f':has-text("{variant}")'
        )
        assert float(panel.get_attribute("data-value") or "nan") == headline[0]

    # One live round into the last bucket (two when the first starts a bucket of its own,
    # so that a merge of a fetched bucket and a live point is what the chart shows).
    step = fetched["step"]
    written = rounds.write(2 if (rounds.writer.last + INTERVAL) % step == 0 else 1)
    wait_event(page, ms(written[-1]))
    wait_until(written[-1] + 0.2)
    answer_now = server.get("/api/metrics?range=1h&variant=all", token=TOKEN).json()
    newest = answer_now["series"]["production"][-1]
    plot = page.locator("[data-testid=panel-latency] .u-over").first
    box = plot.bounding_box()
    # The last point lies on the plot's right edge (a fraction of a pixel inside it).
    page.mouse.move(box["x"] + box["width"] - 0.25, box["y"] + box["height"] / 2)
    page.wait_for_function(
        """() => document.querySelector(
             '[data-testid=panel-latency] [data-testid=chart-readout]').dataset.at !== 'range'"""
    )
    assert float(readout_at(page, "latency")) == newest["ts"]
    hovered, _ = readout(page, "latency", "p95 · production")
    assert hovered == pytest.approx(newest["latency_p95"], rel=1e-9)

    page.mouse.move(0, 0)  # off the plot: the range again, live round included
    page.wait_for_function(
        """() => document.querySelector(
             '[data-testid=panel-latency] [data-testid=chart-readout]').dataset.at === 'range'"""
    )
    for variant in ("production", "canary"):
        assert figure(page, variant, "latencyP95") == readout(page, "latency", f"p95 · {variant}")


def test_the_clients_panel_shows_each_client_with_the_figures_the_api_gives(
    page: Any, server: Dashboard, rounds: Rounds
) -> None:
    """Each client key of the range, over both variants: its class, admitted rate, refusals
    (and why), queue wait p95 and tokens, as /api/metrics's ``clients`` gives them."""
    fetched = open_between_rounds(page, server, rounds, "&range=1h&variant=all")
    clients = fetched["clients"]
    assert set(clients) == {"ide", "ci"}
    table = page.locator("[data-testid=panel-clients] [data-testid=client-table]")
    shown = table.locator("tbody tr").evaluate_all("(rows) => rows.map((r) => r.dataset.client)")
    # Busiest first.
    assert shown == sorted(clients, key=lambda c: -clients[c]["requests"])
    for client, figures in clients.items():
        row = table.locator(f'tbody tr[data-client="{client}"]')

        def cell(field: str, row: Any = row) -> float:
            return float(row.locator(f'[data-field="{field}"]').get_attribute("data-value"))

        assert cell("admitted") == pytest.approx(figures["admitted_per_s"], rel=1e-9)
        assert cell("refused") == pytest.approx(figures["refused"])
        assert cell("wait") == pytest.approx(figures["wait_p95"], rel=1e-9)
        assert cell("tokens-in") == pytest.approx(figures["tokens_in"])
        assert cell("tokens-out") == pytest.approx(figures["tokens_out"])
        classes = row.locator('[data-field="class"]').inner_text()
        assert classes == ", ".join(figures["admitted_by_class"])
        refused = row.locator('[data-field="refused"]').inner_text()
        for reason in figures["refused_by"]:
            assert reason in refused
    assert clients["ci"]["refused"] > 0 and "client_budget_rpm" in table.inner_text()
    # The limiter (its store in memory, no request in it) has no client's flow now.
    flows = page.locator("[data-testid=limiter-flows-empty]")
    assert flows.inner_text().startswith("No client holds or waits")


def test_without_client_keys_the_clients_panel_says_so_on_one_line(
    browser: Any, server: Dashboard, rounds: Rounds
) -> None:
    """Every request anonymous (no PROXY_API_KEYS): one sentence, no table."""

    def anonymous(route: Any) -> None:
        answer = route.fetch()
        data = answer.json()
        for p in [p for ps in data.get("series", {}).values() for p in ps]:
            p["clients"] = {"anonymous": p["clients"]["ide"]}
        route.fulfill(response=answer, body=json.dumps(data))

    rounds.catch_up()
    context = browser.new_context(viewport=DESKTOP, color_scheme="light")
    page = context.new_page()
    try:
        page.route("**/api/metrics*", anonymous)
        page.route("**/api/events*", lambda route: route.abort())
        page.goto(f"{server.url}/?token={TOKEN}")
        page.wait_for_selector(
            '.app[data-loading="false"][data-range]:not([data-range=""])', timeout=WAIT_MS
        )
        empty = page.locator("[data-testid=panel-clients] [data-testid=clients-empty]")
        assert empty.inner_text().startswith("No client keys configured")
        assert page.locator("[data-testid=client-table]").count() == 0
        lines = page.evaluate(
            """() => { const range = document.createRange()
                       range.selectNodeContents(document.querySelector('[data-testid=clients-empty]'))
                       return range.getClientRects().length }"""
        )
        assert lines == 1
    finally:
        page.unroute_all(behavior="ignoreErrors")
        context.close()


def test_an_empty_quota_list_says_so_on_one_line(
    browser: Any, server: Dashboard, rounds: Rounds
) -> None:
    """No window from the limiter nor the proxies: one sentence across the panel."""

    def without_quota(route: Any) -> None:
        answer = route.fetch()
        data = answer.json()
        points = [p for ps in data.get("series", {}).values() for p in ps]
        points += [v["latest"] for v in data.get("variants", {}).values() if v.get("latest")]
        for p in points:
            p["quota_used"], p["quota_reset_at"] = {}, {}
        if data.get("state"):
            data["state"]["quota"] = None
        route.fulfill(response=answer, body=json.dumps(data))

    rounds.catch_up()
    context = browser.new_context(viewport=DESKTOP, color_scheme="light")
    page = context.new_page()
    try:
        for path in ("metrics", "status", "limiter"):
            page.route(f"**/api/{path}*", without_quota)
        page.route("**/api/events*", lambda route: route.abort())
        page.goto(f"{server.url}/?token={TOKEN}")
        empty = page.locator("[data-testid=quota-windows] li")
        empty.wait_for(timeout=WAIT_MS)
        assert empty.count() == 1 and empty.inner_text() == "No quota windows reported"
        lines = page.evaluate(
            """() => { const range = document.createRange()
                       const item = document.querySelector('[data-testid=quota-windows] li')
                       range.selectNodeContents(item)
                       return range.getClientRects().length }"""
        )
        assert lines == 1
    finally:
        page.unroute_all(behavior="ignoreErrors")  # the status poll may be in a route
        context.close()


def test_a_new_collector_round_arrives_over_sse(page: Any, rounds: Rounds) -> None:
    before_ts, _ = last_update(page)
    (written,) = rounds.write(1)
    wait_event(page, ms(written))
    ts, event_id = last_update(page)
    assert event_id == str(ms(written))
    assert ts == written + INTERVAL > before_ts
    assert page.locator("[data-testid=last-update] strong").inner_text() != "—"


def test_the_page_reconnects_after_the_dashboard_restarts(
    page: Any, server: Dashboard, rounds: Rounds
) -> None:
    (first,) = rounds.write(1)
    wait_event(page, ms(first))

    server.stop()
    state = page.locator("[data-testid=connection-state]")
    page.wait_for_selector('[data-testid=connection-state][data-state="reconnecting"]')
    assert "Reconnecting" in state.inner_text()
    (missed,) = rounds.write(1)  # written while the dashboard is down

    server.start()  # the same port
    wait_live(page)
    wait_event(page, ms(missed))  # replayed from the last event id
    (after,) = rounds.write(1)
    wait_event(page, ms(after))
    assert last_update(page) == (after + INTERVAL, str(ms(after)))
    assert state.get_attribute("data-state") == "open"


def test_screenshots_light_and_dark_at_desktop_and_phone_width(
    browser: Any, server: Dashboard, rounds: Rounds
) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    rounds.catch_up()
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport, color_scheme="light")
        page = context.new_page()
        try:
            query = "&range=1h&variant=compare" if name == "desktop" else "&range=1h&variant=all"
            open_dashboard(page, server, query)
            html = page.locator("html")
            assert html.get_attribute("data-theme") == "light"
            light = background(page)
            if name == "phone":
                # One column: every panel as wide as the first, one under the other.
                assert_one_column(page, viewport["width"])
            page.screenshot(path=SCREENSHOTS / f"dashboard-{name}-light.png", full_page=True)

            page.locator("[data-testid=theme-toggle]").click()
            assert html.get_attribute("data-theme") == "dark"
            open_dashboard(page, server, query)  # a new load: the choice is remembered
            assert html.get_attribute("data-theme") == "dark"
            assert background(page) != light
            page.wait_for_timeout(300)
            page.screenshot(path=SCREENSHOTS / f"dashboard-{name}-dark.png", full_page=True)
        finally:
            context.close()
    for name in ("desktop", "phone"):
        for theme in ("light", "dark"):
            assert (SCREENSHOTS / f"dashboard-{name}-{theme}.png").stat().st_size > 10_000
