"""Scraping over real HTTP: a good exposition parses, every kind of failure has its reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from tests.support import free_port
from zai_proxy.collector.scraper import Scraper, create_session
from zai_proxy.collector.targets import ScrapeTarget

Handler = Callable[[web.Request], Awaitable[web.Response]]
EXPOSITION = """\
# HELP proxy_requests_total Requests answered.
# TYPE proxy_requests_total counter
proxy_requests_total{status="200",variant="production"} 7.0
# TYPE proxy_workers gauge
proxy_workers{variant="production"} 64.0
"""


def answer(delay: float = 0.0, **response: object) -> Handler:
    async def handle(_: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(**response)  # type: ignore[arg-type]

    return handle


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """An exporter on loopback with a route for each behaviour."""
    app = web.Application()
    app.router.add_get("/metrics", answer(text=EXPOSITION))
    app.router.add_get("/missing", answer(status=404))
    app.router.add_get("/slow", answer(1.0, text=EXPOSITION))
    app.router.add_get("/garbage", answer(text="proxy_requests_total{ 7 x\n"))
    app.router.add_get("/huge", answer(text="# " + "x" * 5000 + "\n"))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_each_target_gets_its_result_in_order(server: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}/metrics"
    paths = ["/metrics", "/missing", "/slow", "/garbage", "/huge"]
    targets = [ScrapeTarget(server + path, "proxy") for path in paths]
    targets.append(ScrapeTarget(closed, "limiter"))

    async with create_session() as session:
        scraper = Scraper(session, max_bytes=4096, clock=lambda: 1234.5)
        started = asyncio.get_running_loop().time()
        results = await scraper.scrape_all(targets, 0.3)
        took = asyncio.get_running_loop().time() - started

    assert [r.target for r in results] == targets
    assert [r.reason for r in results] == [
        None,
        "status",
        "timeout",
        "parse",
        "too_large",
        "connection",
    ]
    good = results[0].scrape
    assert good is not None and good.time == 1234.5 and good.target == targets[0].url
    key = ("proxy_requests_total", (("status", "200"), ("variant", "production")))
    assert good.samples.counters[key] == 7.0
    assert results[1].detail == "HTTP 404"
    assert took < 0.6  # concurrently, each within its limit
