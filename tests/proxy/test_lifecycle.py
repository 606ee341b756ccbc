"""Streams, workers and process life: disconnects, breaks, queueing, drain, metrics."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support import ServiceProcess, scrape, start_proxy
from zai_proxy.simulator.process import SimulatorProcess

CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def upstream_in_flight(upstream: SimulatorProcess) -> int:
    return int(httpx.get(f"{upstream.url}/_sim/stats").json()["in_flight"])


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> float:
    """Seconds until condition() held; fails after timeout."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


def test_chunks_reach_the_client_as_the_upstream_sends_them(proxy: ServiceProcess) -> None:
    arrivals = []
    headers = {"x-sim-chunks": "4", "x-sim-chunk-gap-ms": "300"}
    with httpx.stream(
        "POST", f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers
    ) as response:
        for _ in response.iter_raw():
            arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Every event arrives on its own, about 300 ms after the previous one.
    assert len(arrivals) >= 5
    assert sum(1 for gap in gaps if gap > 0.2) >= 4


def test_a_client_that_disconnects_cancels_the_upstream_request(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    assert upstream_in_flight(upstream) == 0
    port = int(proxy.url.rsplit(":", 1)[1])
    body = b'{"model":"glm-4.6","stream":true,"messages":[]}'
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"x-sim-chunks: 100\r\nx-sim-chunk-gap-ms: 200\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert upstream_in_flight(upstream) == 1
    sock.close()
    took = wait_for(lambda: upstream_in_flight(upstream) == 0, timeout=3)
    assert took < 1.0
    metrics = scrape(proxy.url)
    assert metrics.value("proxy_in_flight_requests") == 0
    assert metrics.value("proxy_requests_total", status="499") >= 1


def test_a_stream_broken_by_the_upstream_ends_cleanly_and_is_counted(
    proxy: ServiceProcess,
) -> None:
    before = scrape(proxy.url).value("proxy_upstream_errors_total", type="truncated")
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions", json=CHAT, headers={"x-sim-break-after": "2"}
    )
    assert response.status_code == 200
    assert response.text.count("data:") == 2
    after = scrape(proxy.url).value("proxy_upstream_errors_total", type="truncated")
    assert after == before + 1


@pytest.fixture
def narrow_proxy(upstream: SimulatorProcess) -> Iterator[ServiceProcess]:
    env = {"MAX_WORKERS": "1", "MAX_QUEUE": "1", "QUEUE_TIMEOUT": "0.5"}
    with start_proxy(upstream.url, env=env) as service:
        yield service


async def test_requests_beyond_the_workers_wait_then_get_503(
    narrow_proxy: ServiceProcess,
) -> None:
    slow = {"x-sim-latency-ms": "1500"}
    body = {**CHAT, "stream": False}
    async with httpx.AsyncClient(base_url=narrow_proxy.url, timeout=10) as client:
        first = asyncio.create_task(client.post("/v1/chat/completions", json=body, headers=slow))
        await asyncio.sleep(0.2)
        queued = asyncio.create_task(client.post("/v1/chat/completions", json=body, headers=slow))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        overflow = await client.post("/v1/chat/completions", json=body)
        assert overflow.status_code == 503
        assert time.monotonic() - started < 0.3
        assert overflow.headers["retry-after"] == "1"
        timed_out = await queued
        assert timed_out.status_code == 503
        assert "within 0.5 s" in timed_out.json()["error"]["message"]
        assert (await first).status_code == 200
    metrics = scrape(narrow_proxy.url)
    assert metrics.value("proxy_workers") == 1
    assert metrics.value("proxy_in_flight_requests") == 0
    assert metrics.value("proxy_queued_requests") == 0


def test_sigterm_drains_in_flight_streams_and_reports_not_ready(
    upstream: SimulatorProcess,
) -> None:
    env = {"SHUTDOWN_DELAY": "1", "SHUTDOWN_GRACE": "10"}
    with start_proxy(upstream.url, env=env) as proxy:
        headers = {"x-sim-chunks": "10", "x-sim-chunk-gap-ms": "200"}
        with httpx.stream(
            "POST", f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers
        ) as response:
            chunks = response.iter_raw()
            next(chunks)
            proxy.signal(signal.SIGTERM)
            time.sleep(0.3)
            ready = httpx.get(f"{proxy.url}/ready")
            assert ready.status_code == 503
            assert ready.json() == {"status": "draining"}
            rest = b"".join(chunks)
        assert rest.endswith(b"data: [DONE]\n\n")
        assert proxy.process.wait(10) == 0


def test_model_labels_stay_bounded_whatever_clients_send(upstream: SimulatorProcess) -> None:
    with start_proxy(upstream.url, env={"METRICS_MAX_MODELS": "5"}) as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            for _ in range(60):
                model = f"invented-{uuid.uuid4().hex}"
                client.post(
                    "/v1/chat/completions",
                    json={**CHAT, "stream": False, "model": model},
                )
            client.get(f"/v1/{uuid.uuid4().hex}/{uuid.uuid4().hex}")
        metrics = scrape(proxy.url)
    models = {labels["model"] for labels in metrics.series("proxy_requests_total")}
    paths = {labels["path"] for labels in metrics.series("proxy_requests_total")}
    assert len(models - {"other", "unknown"}) == 5
    assert "other" in models
    assert paths <= {"/v1/chat/completions", "/v1/other"}
    assert metrics.value("proxy_requests_total") == 61


def test_metrics_merge_across_worker_processes(
    upstream: SimulatorProcess, real_redis_url: str
) -> None:
    env = {"REDIS_URL": real_redis_url, "REDIS_PREFIX": f"test{uuid.uuid4().hex[:8]}"}
    with start_proxy(upstream.url, env=env, args=("--processes", "2")) as proxy:
        for _ in range(60):
            # A new connection each time, so both processes take requests.
            response = httpx.post(
                f"{proxy.url}/v1/chat/completions",
                json={**CHAT, "stream": False},
                headers={"x-sim-prompt-tokens": "10", "connection": "close"},
            )
            assert response.status_code == 200
        for _ in range(5):
            metrics = scrape(proxy.url)
            assert metrics.value("proxy_requests_total") == 60
            assert metrics.value("proxy_token_input_total") == 600
            assert metrics.value("proxy_workers") == 2 * 64
        # Both processes heartbeat into the shared pool (every 2 s).
        wait_for(lambda: scrape(proxy.url).value("proxy_limiter_replicas") == 2, timeout=5)
        assert proxy.stop() == 0
        serving = set(re.findall(r"\[(\d+)\] zai_proxy.access", proxy.log()))
        assert len(serving) == 2, "both processes should have served requests"
