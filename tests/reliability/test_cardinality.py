"""Label cardinality: a client inventing a new model name and a new path on every one of
100,000 requests leaves the proxy's metric series count where the first requests put it.

Model names become labels until METRICS_MAX_MODELS distinct ones are seen, then ``other``;
paths become route templates (unknown ones ``/v1/other``). The requests go through to
the simulated upstream like any other, so every metric family the proxy touches on a
forwarded request (requests, duration, time to first byte, sizes, tokens) is exercised.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import orjson
import pytest

from tests.reliability.probes import port_of, rss_bytes
from tests.support import ServiceProcess, scrape, start_proxy
from zai_proxy.simulator.process import SimulatorProcess

REQUESTS = 100_000
CONNECTIONS = 24
MAX_MODELS = 20
MB = 1024 * 1024
ENV = {
    "METRICS_MAX_MODELS": str(MAX_MODELS),
    "ACCESS_LOG": "false",
    "RATE_LIMIT_INITIAL": "100000",
    "RATE_LIMIT_MAX": "100000",
}


@pytest.fixture
def proxy(simulator: SimulatorProcess) -> Iterator[ServiceProcess]:
    with start_proxy(simulator.url, env=ENV) as service:
        yield service


def request_bytes(port: int, index: int) -> bytes:
    """A chat completion for an invented model, at an invented path every other time."""
    body = orjson.dumps(
        {"model": f"invented-model-{index}", "messages": [{"role": "user", "content": "hi"}]}
    )
    path = "/v1/chat/completions" if index % 2 else f"/v1/invented/{index}/path"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def read_answer(reader: asyncio.StreamReader) -> int:
    """Read one answer with a Content-Length body; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def send_all(port: int, indexes: range) -> Counter[int]:
    """Send the requests over CONNECTIONS keep-alive connections; statuses counted."""
    statuses: Counter[int] = Counter()

    async def connection(lane: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for index in indexes[lane::CONNECTIONS]:
                writer.write(request_bytes(port, index))
                statuses[await asyncio.wait_for(read_answer(reader), 30)] += 1
        finally:
            writer.close()

    async def run() -> None:
        await asyncio.gather(*(connection(lane) for lane in range(CONNECTIONS)))

    asyncio.run(run())
    return statuses


def series(proxy: ServiceProcess) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    """Every series the proxy exports: its sample name and label set."""
    return {(name, frozenset(labels.items())) for name, labels, _ in scrape(proxy.url).samples}


def test_a_hundred_thousand_invented_models_and_paths_leave_the_series_count_bounded(
    proxy: ServiceProcess,
) -> None:
    port = port_of(proxy.url)
    warm = send_all(port, range(2 * MAX_MODELS))
    assert warm == {200: 2 * MAX_MODELS}, warm
    series(proxy)  # the first scrape adds the /metrics endpoint's own series
    before, rss_before = series(proxy), rss_bytes(proxy.process.pid)

    started = time.monotonic()
    statuses = send_all(port, range(2 * MAX_MODELS, REQUESTS))
    took = time.monotonic() - started
    after, rss_after = series(proxy), rss_bytes(proxy.process.pid)
    print(
        f"{REQUESTS} requests with invented models and paths in {took:.1f} s "
        f"({REQUESTS / took:.0f}/s): {len(before)} series before, {len(after)} after; "
        f"RSS {rss_before / MB:.1f} -> {rss_after / MB:.1f} MB"
    )

    assert statuses == {200: REQUESTS - 2 * MAX_MODELS}, statuses
    # The warm-up already filled the model labels and made "other" and /v1/other: the
    # 99,960 requests after it, each with a new name, added no series at all.
    assert after == before, sorted(after ^ before)[:5]
    paths = {path for _, labels in after if (path := dict(labels).get("path")) is not None}
    assert not any("invented" in path for path in paths), paths
    models = {labels["model"] for labels in scrape(proxy.url).series("proxy_requests_total")}
    assert len(models - {"other", "unknown"}) == MAX_MODELS
    assert rss_after - rss_before < 32 * MB
