"""The dashboard's latency figures against ground truth: what a client measured itself.

`zai-proxy up` (proxy, limiter, collector, dashboard API) runs against the simulator; a
client sends a fixed mix of answers whose timing the simulator scripts (x-sim-latency-ms
before the response headers, x-sim-chunk-gap-ms between stream events), all at once, and
times each one: its first body byte and its last. Meanwhile it provokes the proxy's own
refusals (TRACE, which the proxy answers 405 itself; the limiter's 429s go the same way,
origin="proxy", but provoking them would hold the answers back too). Once the collector
has rolled every answer up, the dashboard API's range summary (`/api/metrics`, the
headline's figures) must give p50, p95 and p99 of upstream latency and of TTFB within 10%
of the exact percentiles of what the client measured: the bucket ladder allows 9.1%
between 1 s and 128 s (zai_proxy.proxy.buckets), and the mix puts every percentile there,
each well inside one group of equal answers. The refusals outnumber the answers, so had
they been counted as latency the p50 would be theirs (milliseconds).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest

from tests.support import ServiceProcess, launch_stack, wait_until
from zai_proxy.simulator.process import SimulatorProcess, start_simulator

TOLERANCE = 0.10
PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
# A simulated stream of 5 deltas is 8 events (the role rides on the first delta; then
# finish, usage, [DONE]): 7 gaps.
STREAM_GAPS = 7
REFUSALS = 300
REFUSING_CLIENTS = 10


@dataclass(frozen=True, slots=True)
class Group:
    """Requests answered alike: first byte after `first_byte` s, last about `duration` s."""

    count: int
    stream: bool
    first_byte: float
    duration: float

    def headers(self) -> dict[str, str]:
        headers = {"x-sim-latency-ms": f"{self.first_byte * 1000:g}", "x-sim-chunks": "5"}
        if self.stream:
            gap = (self.duration - self.first_byte) / STREAM_GAPS
            headers["x-sim-chunk-gap-ms"] = f"{gap * 1000:g}"
        return headers


# 100 answers. Sorted by duration: 0.2 s (ranks 1-20), 3 s (21-60), 12 s (61-96), 45 s
# (97-100), so p50 is a 3 s answer, p95 a 12 s one, p99 a 45 s one; by first byte, the
# streams' 1.5 s, 6 s and 30 s. The non-streamed answers' first byte is their body.
MIX = (
    Group(20, stream=False, first_byte=0.2, duration=0.2),
    Group(40, stream=True, first_byte=1.5, duration=3.0),
    Group(36, stream=True, first_byte=6.0, duration=12.0),
    Group(4, stream=True, first_byte=30.0, duration=45.0),
)
ANSWERS = sum(group.count for group in MIX)


@dataclass(frozen=True, slots=True)
class Timing:
    """One request as its client saw it: status, seconds to its first body byte and its last."""

    status: int
    first_byte: float
    duration: float


def exact(values: list[float], q: float) -> float:
    """The q-quantile of the values, linear between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def timed(http: aiohttp.ClientSession, method: str, url: str, **request: Any) -> Timing:
    """Send one request; time its first body byte and its last from just before sending."""
    start = time.perf_counter()
    first_byte = None
    async with http.request(method, url, **request) as response:
        async for chunk in response.content.iter_any():
            if chunk and first_byte is None:
                first_byte = time.perf_counter() - start
    duration = time.perf_counter() - start
    return Timing(response.status, duration if first_byte is None else first_byte, duration)


async def drive(proxy: str) -> tuple[list[Timing], list[Timing]]:
    """The whole mix at once and, while it is out, the refusals; both as their clients saw them."""
    url = f"{proxy}/v1/chat/completions"
    # aiohttp, not httpx: httpx's pool adds 0.1-0.5 s to a hundred requests sent at once
    # (seconds once its connections are open), which the proxy never sees.
    connector = aiohttp.TCPConnector(limit=ANSWERS + REFUSING_CLIENTS)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        # Connections open beforehand, so that no request's time includes opening one.
        await asyncio.gather(*(timed(http, "GET", f"{proxy}/health") for _ in range(ANSWERS)))

        def ask(group: Group) -> Any:
            body: dict[str, Any] = {
                "model": "glm-4.6",
                "messages": [{"role": "user", "content": "hi"}],
            }
            if group.stream:
                body.update(stream=True, stream_options={"include_usage": True})
            return timed(http, "POST", url, json=body, headers=group.headers())

        answers = asyncio.gather(*(ask(group) for group in MIX for _ in range(group.count)))

        async def refused() -> list[Timing]:
            return [await timed(http, "TRACE", url) for _ in range(REFUSALS // REFUSING_CLIENTS)]

        await asyncio.sleep(0.5)
        refusals = await asyncio.gather(*(refused() for _ in range(REFUSING_CLIENTS)))
        return list(await answers), [timing for client in refusals for timing in client]


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    with start_simulator() as sim:
        yield sim


@pytest.fixture(scope="module")
def stack(simulator: SimulatorProcess) -> Iterator[ServiceProcess]:
    # Every answer of the mix holds a worker at once: none may queue for one.
    service = launch_stack(simulator.url, {"SCRAPE_INTERVAL": "1", "MAX_WORKERS": "256"})
    try:
        yield service
    finally:
        service.stop(timeout=20)
    assert "Traceback" not in service.log()


def summary(stack: ServiceProcess) -> dict[str, Any]:
    """The production variant's range summary, as the dashboard's headline reads it."""
    dashboard = f"http://127.0.0.1:{stack.env['DASHBOARD_PORT']}"
    answer = httpx.get(f"{dashboard}/api/metrics", params={"range": "5m"}, timeout=10)
    answer.raise_for_status()
    return answer.json()["summary"].get("production") or {}


def rolled_up(point: dict[str, Any]) -> bool:
    """Whether a summary holds every answer's TTFB and every refusal (the duration of an
    answer is recorded with its TTFB: the latency count is checked after the figures)."""
    return bool(point) and (point["ttfb_buckets"]["count"], point["refusals_total"]) == (
        ANSWERS,
        REFUSALS,
    )


@pytest.mark.timeout(240)
def test_dashboard_percentiles_lie_within_ten_percent_of_what_the_client_measured(
    stack: ServiceProcess,
) -> None:
    started = time.monotonic()
    answers, refusals = asyncio.run(drive(stack.url))
    assert [timing.status for timing in answers] == [200] * ANSWERS
    assert [timing.status for timing in refusals] == [405] * REFUSALS
    driven = time.monotonic() - started

    try:
        wait_until(lambda: rolled_up(summary(stack)), timeout=30, interval=0.5)
    except AssertionError:
        held = summary(stack)
        counts = {k: held.get(k) for k in ("latency_buckets", "ttfb_buckets", "refusals_total")}
        raise AssertionError(f"not rolled up within 30 s ({ANSWERS} answers, {REFUSALS} "
                             f"refusals sent): {counts}") from None  # fmt: skip
    point = summary(stack)

    truth = {
        "latency": [timing.duration for timing in answers],
        "ttfb": [timing.first_byte for timing in answers],
    }
    rows, wrong = [], []
    for family, measured in truth.items():
        for name, q in PERCENTILES:
            shown, real = point[f"{family}_{name}"], exact(measured, q)
            error = (shown - real) / real
            rows.append(f"{family} {name}: API {shown:.3f} s, client {real:.3f} s ({error:+.1%})")
            if abs(error) > TOLERANCE:
                wrong.append(rows[-1])
    report = "\n".join(rows)
    print(f"\n{report}\ndriven in {driven:.1f} s, rolled up in {time.monotonic() - started:.1f} s")
    assert not wrong, f"off by more than {TOLERANCE:.0%}:\n" + "\n".join(wrong) + f"\n\n{report}"

    # Upstream answers only: the proxy's refusals are counted apart, their wait apart.
    assert point["latency_buckets"]["count"] == ANSWERS
    # No answer's first byte comes after its last: neither may the percentiles'.
    for name, _ in PERCENTILES:
        assert point[f"ttfb_{name}"] <= point[f"latency_{name}"]
    # Counted as latency, the refusals (milliseconds each) would have been its p50.
    everything = [timing.duration for timing in answers + refusals]
    assert exact(everything, 0.5) < 0.1 < exact(truth["latency"], 0.5) * (1 - TOLERANCE)
    assert point["refusal_wait_p50"] is not None and point["refusal_wait_p50"] < 0.1
