"""Upstream faults through a real proxy: refused connections, resets, stalls, garbage, 5xx
bursts and 429 storms. Each ends with a clear answer (or a cleanly ended stream), at most
MAX_RETRIES + 1 attempts per request, counted in the metrics, and nothing left behind: no
worker slot, no upstream request, no file descriptor beyond the idle keep-alive pool.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.reliability.probes import (
    Baseline,
    ScriptedServer,
    assert_settled,
    attempts_seen,
    sim_stats,
)
from tests.support import ServiceProcess, free_port, scrape, start_proxy, wait_until
from zai_proxy.simulator.process import SimulatorProcess

MAX_RETRIES = 2
ATTEMPTS = MAX_RETRIES + 1
WORKERS = 32
READ_TIMEOUT = 0.5
CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}
# Retries come quickly; scripted 429s must not teach the limiter a rate below the load.
ENV = {
    "MAX_RETRIES": str(MAX_RETRIES),
    "RETRY_BACKOFF_BASE": "0.01",
    "RETRY_BACKOFF_MAX": "0.5",
    "RATE_LIMIT_MIN": "1000",
    "MAX_WORKERS": str(WORKERS),
    "UPSTREAM_READ_TIMEOUT": str(READ_TIMEOUT),
    "UPSTREAM_CONNECT_TIMEOUT": "2",
    "ACCESS_LOG": "false",
}


@pytest.fixture(scope="module")
def proxy(simulator: SimulatorProcess) -> Iterator[ServiceProcess]:
    with start_proxy(simulator.url, env=ENV) as service:
        assert httpx.post(f"{service.url}/v1/chat/completions", json=CHAT).status_code == 200
        yield service


@pytest.fixture(scope="module")
def baseline(proxy: ServiceProcess) -> Baseline:
    return Baseline.of(proxy)


def post_all(
    url: str, count: int, headers: dict[str, str] | None = None, *, body: dict = CHAT
) -> list[tuple[dict[str, str], httpx.Response | Exception]]:
    """``count`` requests at once, each with its own request id; (headers, answer) each."""

    async def one(client: httpx.AsyncClient) -> tuple[dict[str, str], httpx.Response | Exception]:
        sent = {**(headers or {}), "x-request-id": uuid.uuid4().hex}
        try:
            return sent, await client.post("/v1/chat/completions", json=body, headers=sent)
        except httpx.HTTPError as exc:
            return sent, exc

    async def run() -> list[tuple[dict[str, str], httpx.Response | Exception]]:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            return await asyncio.gather(*(one(client) for _ in range(count)))

    return asyncio.run(run())


def responses(answers: list[tuple[dict[str, str], httpx.Response | Exception]]) -> list:
    failed = [answer for _, answer in answers if not isinstance(answer, httpx.Response)]
    assert not failed, failed[:3]
    return [answer for _, answer in answers]


def counter(proxy: ServiceProcess, name: str, **labels: str) -> float:
    return scrape(proxy.url).value(name, **labels)


# --- connection refused ---------------------------------------------------------------------


def test_a_refused_connection_is_retried_then_answered_502_and_nothing_leaks() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with start_proxy(dead, env=ENV) as proxy:
        baseline = Baseline.of(proxy)
        started = time.monotonic()
        answers = responses(post_all(proxy.url, 100))
        took = time.monotonic() - started
        assert {a.status_code for a in answers} == {502}
        assert {a.headers["x-proxy-error"] for a in answers} == {"upstream_unavailable"}
        metrics = scrape(proxy.url)
        assert metrics.value("proxy_upstream_errors_total", type="network") == 100 * ATTEMPTS
        assert metrics.value("proxy_retry_attempts_total", reason="network") == 100 * MAX_RETRIES
        assert metrics.value("proxy_requests_total", status="502") == 100
        assert_settled(proxy, baseline)
    print(f"100 requests to a refused port: all 502 in {took:.2f} s")
    assert took < 10


def test_an_upstream_that_cannot_be_reached_is_named_in_one_warning_not_one_a_request() -> None:
    port = free_port()
    with start_proxy(f"http://127.0.0.1:{port}", env=ENV) as proxy:
        for _ in range(3):
            assert {a.status_code for a in responses(post_all(proxy.url, 20))} == {502}
        wait_until(lambda: "cannot connect" in proxy.log(), 5)
        time.sleep(0.5)  # the log is written from a queue
        warnings = [line for line in proxy.log().splitlines() if f"127.0.0.1:{port}" in line]
    print(f"60 requests, 180 attempts at a refused port: {warnings}")
    assert len(warnings) == 1, warnings
    (warning,) = warnings
    assert "WARNING" in warning and "cannot connect" in warning
    assert "ClientConnectorError" in warning  # the library's error, as it said it


# --- resets ---------------------------------------------------------------------------------


def test_an_answer_reset_mid_body_is_retried_then_answered_502(
    proxy: ServiceProcess, simulator: SimulatorProcess, baseline: Baseline
) -> None:
    before = scrape(proxy.url)
    answers = post_all(proxy.url, 20, {"x-sim-break-after": "40"})
    for sent, answer in answers:
        assert isinstance(answer, httpx.Response)
        assert answer.status_code == 502, answer.text
        assert answer.json()["error"]["code"] == "upstream_unavailable"
        assert attempts_seen(simulator.url, sent["x-request-id"]) == ATTEMPTS
    after = scrape(proxy.url)
    retried = after.value("proxy_retry_attempts_total", reason="network") - before.value(
        "proxy_retry_attempts_total", reason="network"
    )
    errors = after.value("proxy_upstream_errors_total", type="network") - before.value(
        "proxy_upstream_errors_total", type="network"
    )
    assert retried == 20 * MAX_RETRIES
    assert errors == 20 * ATTEMPTS
    assert_settled(proxy, baseline, simulator_url=simulator.url, pooled=WORKERS)


def test_streams_reset_mid_way_end_cleanly_and_are_counted_as_truncated(
    proxy: ServiceProcess, simulator: SimulatorProcess, baseline: Baseline
) -> None:
    before = counter(proxy, "proxy_upstream_errors_total", type="truncated")
    headers = {"x-sim-break-after": "3", "x-sim-chunk-gap-ms": "20"}
    answers = responses(post_all(proxy.url, 50, headers, body=STREAM))
    for answer in answers:
        # httpx read the whole chunked body without error: the stream was ended, not cut.
        assert answer.status_code == 200
        assert answer.text.count("data:") == 3
        assert "[DONE]" not in answer.text
    after = counter(proxy, "proxy_upstream_errors_total", type="truncated")
    assert after - before == 50
    assert_settled(proxy, baseline, simulator_url=simulator.url, pooled=WORKERS)


# --- stalls ---------------------------------------------------------------------------------


def test_an_upstream_silent_before_its_headers_times_out_with_504_after_bounded_attempts(
    proxy: ServiceProcess, simulator: SimulatorProcess, baseline: Baseline
) -> None:
    before = counter(proxy, "proxy_upstream_errors_total", type="timeout")
    started = time.monotonic()
    answers = post_all(proxy.url, 10, {"x-sim-latency-ms": "5000"})
    took = time.monotonic() - started
    for sent, answer in answers:
        assert isinstance(answer, httpx.Response)
        assert answer.status_code == 504
        assert answer.headers["x-proxy-error"] == "upstream_timeout"
        assert attempts_seen(simulator.url, sent["x-request-id"]) == ATTEMPTS
    assert counter(proxy, "proxy_upstream_errors_total", type="timeout") - before == 10 * ATTEMPTS
    # Each attempt gives up after UPSTREAM_READ_TIMEOUT, with short back-offs between.
    assert took < ATTEMPTS * READ_TIMEOUT + 2 * 0.5 + 2
    # The simulator still sleeps on the abandoned attempts; they end by themselves.
    assert_settled(proxy, baseline, simulator_url=simulator.url, pooled=WORKERS)


def test_a_stream_that_stalls_mid_way_is_ended_cleanly_once_the_read_timeout_fires(
    proxy: ServiceProcess, simulator: SimulatorProcess, baseline: Baseline
) -> None:
    before = counter(proxy, "proxy_upstream_errors_total", type="timeout")
    headers = {"x-sim-chunks": "5", "x-sim-chunk-gap-ms": "4000"}
    started = time.monotonic()
    answers = responses(post_all(proxy.url, 10, headers, body=STREAM))
    took = time.monotonic() - started
    for answer in answers:
        assert answer.status_code == 200
        assert 1 <= answer.text.count("data:") < 5
        assert "[DONE]" not in answer.text
    assert counter(proxy, "proxy_upstream_errors_total", type="timeout") - before == 10
    assert took < READ_TIMEOUT + 2  # not the 16 s the upstream would have taken
    assert_settled(proxy, baseline, simulator_url=simulator.url, pooled=WORKERS)


# --- garbage --------------------------------------------------------------------------------


def test_a_200_with_a_body_that_is_not_json_passes_through_and_is_estimated(
    proxy: ServiceProcess, simulator: SimulatorProcess, baseline: Baseline
) -> None:
    before = counter(proxy, "proxy_token_input_total", source="estimate")
    body = "<html>certainly not JSON {"
    headers = {"x-sim-status": "200", "x-sim-body": body}
    answers = responses(post_all(proxy.url, 10, headers))
    for answer in answers:
        assert answer.status_code == 200
        assert answer.text == body
    assert counter(proxy, "proxy_token_input_total", source="estimate") > before
    assert_settled(proxy, baseline, simulator_url=simulator.url, pooled=WORKERS)


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


@pytest.fixture(scope="module")
def scripted_proxy(scripted: ScriptedServer) -> Iterator[ServiceProcess]:
    with start_proxy(scripted.url, env=ENV) as service:
        yield service


GARBAGE = {
    "bytes that are not HTTP": (b"\x00\xff\x16\x03 garbage\r\n\r\n", 502),
    "a close without a byte": (b"", 502),
    "a status line and nothing else": (b"HTTP/1.1 200 OK\r\n", 502),
    "a body shorter than its length": (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", 502),
    "a header line of 100 KB": (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 502),
    "a broken chunked stream": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\nnot a chunk\r\n",
        502,
    ),
    "an invalid status code": (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", 502),
    "silence": (None, 504),
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_an_upstream_answering_garbage_gets_a_clear_error_after_bounded_attempts(
    scripted: ScriptedServer, scripted_proxy: ServiceProcess, case: str
) -> None:
    reply, status = GARBAGE[case]
    baseline = Baseline.of(scripted_proxy)
    scripted.reply = reply
    connections = scripted.connections
    response = httpx.post(f"{scripted_proxy.url}/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == status, response.text
    assert response.headers["x-proxy-error"] in ("upstream_unavailable", "upstream_timeout")
    assert response.json()["source"] == "proxy"
    assert scripted.connections - connections == ATTEMPTS
    scripted.drop_held()
    assert_settled(scripted_proxy, baseline)


# --- bursts ---------------------------------------------------------------------------------


def test_a_burst_of_5xx_passes_through_once_each_and_the_next_request_succeeds(
    proxy: ServiceProcess, simulator: SimulatorProcess, baseline: Baseline
) -> None:
    before = counter(proxy, "proxy_upstream_errors_total", type="server_error")
    scripted_before = sim_stats(simulator.url)["scripted_errors"]
    for answer in responses(post_all(proxy.url, 100, {"x-sim-status": "503"})):
        assert answer.status_code == 503
        assert "x-proxy-error" not in answer.headers  # the upstream's answer, untouched
    # 5xx are not retried (docs/plan/0005-retry-classes.md): one attempt each.
    assert sim_stats(simulator.url)["scripted_errors"] - scripted_before == 100
    assert counter(proxy, "proxy_upstream_errors_total", type="server_error") - before == 100
    after = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
    assert after.status_code == 200
    assert_settled(proxy, baseline, simulator_url=simulator.url, pooled=WORKERS)


def test_a_429_storm_gets_at_most_max_retries_plus_one_attempts_per_request(
    proxy: ServiceProcess, simulator: SimulatorProcess, baseline: Baseline
) -> None:
    before = scrape(proxy.url)
    count = 60
    answers = post_all(proxy.url, count, {"x-sim-zai-code": "1305"})
    attempts = []
    for sent, answer in answers:
        assert isinstance(answer, httpx.Response)
        # The last upstream answer is passed on once the retries run out.
        assert answer.status_code == 429
        assert answer.json()["error"]["code"] == "1305"
        attempts.append(attempts_seen(simulator.url, sent["x-request-id"]))
    assert attempts == [ATTEMPTS] * count
    after = scrape(proxy.url)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("proxy_upstream_errors_total", type="rate_frequency") == count * ATTEMPTS
    assert delta("proxy_retry_attempts_total", reason="rate_frequency") == count * MAX_RETRIES
    assert delta("proxy_requests_total", status="429") == count
    assert delta("proxy_rate_limited_total") == 0  # every 429 was the upstream's
    assert_settled(proxy, baseline, simulator_url=simulator.url, pooled=WORKERS)


def test_a_429_storm_that_passes_is_absorbed_by_retries(
    proxy: ServiceProcess, simulator: SimulatorProcess, baseline: Baseline
) -> None:
    count = 60

    async def run() -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:

            async def one() -> tuple[str, httpx.Response]:
                request_id = uuid.uuid4().hex
                headers = {
                    "x-request-id": request_id,
                    "x-sim-fail-first": str(MAX_RETRIES),
                    "x-sim-key": request_id,
                    "x-sim-zai-code": "1302" if len(request_id) % 2 else "1312",
                }
                return request_id, await client.post(
                    "/v1/chat/completions", json=CHAT, headers=headers
                )

            return await asyncio.gather(*(one() for _ in range(count)))

    for request_id, answer in asyncio.run(run()):
        assert answer.status_code == 200
        assert attempts_seen(simulator.url, request_id) == ATTEMPTS
    assert_settled(proxy, baseline, simulator_url=simulator.url, pooled=WORKERS)
