"""Forwarding through a real proxy process to a real simulated upstream."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import socket
import time
import uuid
from collections.abc import Callable

import httpx
import orjson
import pytest
from pydantic import SecretStr
from tenacity import AsyncRetrying

from tests.support import TEST_KEY, Scrape, ServiceProcess, free_port, start_proxy, wait_until
from zai_proxy.limiter.settings import LimiterSettings
from zai_proxy.proxy.app import ProxyApp
from zai_proxy.proxy.retries import RetryableAttempt, RetryPolicy
from zai_proxy.proxy.settings import ProxySettings
from zai_proxy.simulator.process import SimulatorProcess


def seen_by_upstream(upstream: SimulatorProcess, request_id: str) -> dict:
    response = httpx.get(f"{upstream.url}/_sim/requests/{request_id}")
    assert response.status_code == 200, f"upstream never saw request {request_id}"
    return response.json()


def header_values(record: dict, name: str) -> list[str]:
    return [value for key, value in record["headers"] if key == name]


def new_id() -> str:
    return uuid.uuid4().hex


CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.parametrize(
    ("client_path", "upstream_path"),
    [
        ("/v1/chat/completions", "/api/paas/v4/chat/completions"),
        ("/v1/embeddings", "/api/paas/v4/embeddings"),
        ("/v1/models", "/api/paas/v4/models"),
        ("/v1/messages", "/api/anthropic/v1/messages"),
        ("/v1/messages/count_tokens", "/api/anthropic/v1/messages/count_tokens"),
        ("/v1/files/abc%20def", "/api/paas/v4/files/abc%20def"),
        ("/custom/path", "/api/paas/v4/custom/path"),
    ],
)
def test_paths_map_onto_the_dialect_base(
    proxy: ServiceProcess, upstream: SimulatorProcess, client_path: str, upstream_path: str
) -> None:
    request_id = new_id()
    httpx.post(
        f"{proxy.url}{client_path}?b=2&a=%2F1&a=3",
        content=orjson.dumps(CHAT),
        headers={"x-request-id": request_id, "content-type": "application/json"},
    )
    record = seen_by_upstream(upstream, request_id)
    assert record["raw_path"] == upstream_path
    assert record["query_string"] == "b=2&a=%2F1&a=3"


@pytest.mark.parametrize(
    "target",
    [
        b"http://evil.example/v1/chat/completions",
        b"//evil.example/v1/chat/completions",
        b"/v1/../../admin",
        b"/v1/%2e%2e/admin",
        b"/v1/chat%2Fcompletions",
        b"/v1/chat%5ccompletions",
        b"/v1/chat/completions%00",
        b"/v1/./chat/completions",
    ],
)
def test_targets_that_could_leave_the_upstream_are_refused(
    proxy: ServiceProcess, target: bytes
) -> None:
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n{}"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"invalid_request_target" in answer


def test_openai_requests_carry_the_upstream_key_as_bearer(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    request_id = new_id()
    httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json=CHAT,
        headers={
            "authorization": "Bearer client-own-key",
            "x-api-key": "client-other-key",
            "x-request-id": request_id,
        },
    )
    record = seen_by_upstream(upstream, request_id)
    assert header_values(record, "authorization") == [f"Bearer {TEST_KEY}"]
    assert header_values(record, "x-api-key") == []


def test_anthropic_requests_carry_the_upstream_key_as_x_api_key(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    request_id = new_id()
    httpx.post(
        f"{proxy.url}/v1/messages",
        json={**CHAT, "max_tokens": 10},
        headers={
            "authorization": "Bearer client-own-key",
            "x-api-key": "client-other-key",
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "prompt-caching-2024-07-31",
            "x-request-id": request_id,
        },
    )
    record = seen_by_upstream(upstream, request_id)
    assert header_values(record, "x-api-key") == [TEST_KEY]
    assert header_values(record, "authorization") == []
    assert header_values(record, "anthropic-version") == ["2023-06-01"]
    assert header_values(record, "anthropic-beta") == ["prompt-caching-2024-07-31"]


def test_hop_by_hop_headers_stop_at_the_proxy_and_the_rest_pass(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    request_id = new_id()
    httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json=CHAT,
        headers={
            "connection": "keep-alive, x-private-hop",
            "x-private-hop": "must not pass",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "proxy-authorization": "Basic abc",
            "openai-organization": "org-1",
            "openai-beta": "assistants=v2",
            "user-agent": "test-suite/1.0",
            "x-request-id": request_id,
        },
    )
    record = seen_by_upstream(upstream, request_id)
    names = {name for name, _ in record["headers"]}
    assert not names & {"x-private-hop", "keep-alive", "te", "proxy-authorization"}
    assert header_values(record, "connection") in ([], ["keep-alive"])
    assert header_values(record, "openai-organization") == ["org-1"]
    assert header_values(record, "openai-beta") == ["assistants=v2"]
    assert header_values(record, "user-agent") == ["test-suite/1.0"]
    assert header_values(record, "host") == [upstream.url.removeprefix("http://")]


def test_header_values_in_utf_8_reach_the_upstream_byte_for_byte(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    request_id, title = new_id(), "café ☕ ü".encode()
    httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json=CHAT,
        headers=[(b"x-title", title), (b"x-request-id", request_id.encode())],
    )
    # The simulator records header bytes as latin-1 text.
    assert header_values(seen_by_upstream(upstream, request_id), "x-title") == [
        title.decode("latin-1")
    ]


def test_a_request_id_is_made_when_missing_and_echoed(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    assert seen_by_upstream(upstream, request_id)
    # The access log is written in batches, a tenth of a second apart.
    wait_until(lambda: f"request_id={request_id}" in proxy.log(), timeout=5)

    mine = new_id()
    echoed = httpx.post(
        f"{proxy.url}/v1/chat/completions", json=CHAT, headers={"x-request-id": mine}
    )
    assert echoed.headers["x-request-id"] == mine


def test_request_bodies_arrive_byte_for_byte(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    body = (
        b'{ "model" : "glm-4.6",\n  "messages": '
        b'[{"role":"user","content":"caf\\u00e9 \xe2\x98\x95"}],'
        b'\t"temperature": 1.50, "stream_options": {"include_usage": true}, "stream": false }'
    )
    request_id = new_id()
    httpx.post(
        f"{proxy.url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", "x-request-id": request_id},
    )
    record = seen_by_upstream(upstream, request_id)
    assert base64.b64decode(record["body_b64"]) == body


def test_bodies_that_are_not_json_are_forwarded_unchanged(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    body = bytes(range(256)) * 10
    request_id = new_id()
    response = httpx.post(
        f"{proxy.url}/v1/uploads",
        content=body,
        headers={"content-type": "application/json", "x-request-id": request_id},
    )
    assert response.status_code == 200
    record = seen_by_upstream(upstream, request_id)
    assert record["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("status", [200, 201, 400, 401, 404, 418, 500, 503])
def test_status_and_body_pass_through_byte_for_byte(proxy: ServiceProcess, status: int) -> None:
    body = '{"odd":  "formatting" ,"n":1.0e3}'
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json=CHAT,
        headers={"x-sim-status": str(status), "x-sim-body": body},
    )
    assert response.status_code == status
    assert response.content == body.encode()
    assert response.headers["content-length"] == str(len(body))


def test_large_answers_stream_through_unchanged(proxy: ServiceProcess) -> None:
    headers = {"x-sim-stream-bytes": str(3 * 1024 * 1024)}
    with httpx.stream(
        "POST", f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers
    ) as response:
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["cache-control"] == "no-cache"
        size = sum(len(chunk) for chunk in response.iter_raw())
    assert size >= 3 * 1024 * 1024


def test_oversized_bodies_get_413(upstream: SimulatorProcess) -> None:
    with start_proxy(upstream.url, env={"MAX_REQUEST_BODY_BYTES": "2048"}) as small:
        response = httpx.post(f"{small.url}/v1/chat/completions", content=b"x" * 4096)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"


def test_an_unreachable_upstream_gives_502_in_the_clients_dialect() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with start_proxy(dead) as proxy:
        openai = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
        anthropic = httpx.post(f"{proxy.url}/v1/messages", json=CHAT)
    assert openai.status_code == 502
    assert openai.headers["x-proxy-error"] == "upstream_unavailable"
    assert openai.json()["error"]["code"] == "upstream_unavailable"
    assert anthropic.status_code == 502
    assert anthropic.json()["type"] == "error"


def test_a_silent_upstream_gives_504(upstream: SimulatorProcess) -> None:
    with start_proxy(upstream.url, env={"UPSTREAM_READ_TIMEOUT": "0.3"}) as proxy:
        response = httpx.post(
            f"{proxy.url}/v1/chat/completions", json=CHAT, headers={"x-sim-latency-ms": "2000"}
        )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_the_upstream_key_never_reaches_clients_or_logs(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    answers = [
        httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT),
        httpx.post(f"{proxy.url}/v1/messages", json=CHAT, headers={"x-sim-status": "401"}),
        httpx.get(f"{proxy.url}/anything"),
        httpx.get(f"{proxy.url}/metrics"),
    ]
    for answer in answers:
        assert TEST_KEY not in str(answer.headers)
        # The echo endpoint shows what the upstream received; only it may hold the key.
        if not answer.request.url.path.startswith("/anything"):
            assert TEST_KEY not in answer.text
    assert TEST_KEY not in proxy.log()


def test_health_and_ready(proxy: ServiceProcess) -> None:
    assert httpx.get(f"{proxy.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{proxy.url}/ready").status_code == 200


async def test_requests_waiting_for_the_limiter_hold_no_worker(upstream: SimulatorProcess) -> None:
    # One worker, four requests at 2 rps: the last one's turn comes after 1.5 s, later than
    # the 1 s a request may wait for a worker. Waiting for its turn on a worker, it would
    # be answered 503; each exchange (0.3 s) ends before the next turn, so none waits.
    env = {
        "MAX_WORKERS": "1",
        "QUEUE_TIMEOUT": "1",
        "RATE_LIMIT_INITIAL": "2",
        "RATE_LIMIT_MIN": "2",
        "RATE_LIMIT_MAX": "2",
        "RATE_LIMIT_BURST": "0",
        "RATE_LIMIT_MAX_WAIT": "5",
    }
    with start_proxy(upstream.url, env=env) as proxy:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=10.0) as client:
            in_flight: list[float] = []

            async def sample() -> None:
                while True:
                    metrics = Scrape((await client.get("/metrics")).text)
                    in_flight.append(metrics.value("proxy_in_flight_requests"))
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())
            started = time.monotonic()
            answers = await asyncio.gather(
                *(
                    client.post(
                        "/v1/chat/completions", json=CHAT, headers={"x-sim-latency-ms": "300"}
                    )
                    for _ in range(4)
                )
            )
            elapsed = time.monotonic() - started
            sampler.cancel()
            final = Scrape((await client.get("/metrics")).text)

    assert [answer.status_code for answer in answers] == [200] * 4
    assert elapsed >= 1.4  # they waited their turns at 2 rps
    assert max(in_flight) == 1
    assert final.value("proxy_retry_attempts_total") == 0


@pytest.mark.parametrize(("failures", "loops"), [(0, 0), (1, 1)])
async def test_only_a_first_attempt_that_fails_builds_a_retry_loop(
    upstream: SimulatorProcess, monkeypatch: pytest.MonkeyPatch, failures: int, loops: int
) -> None:
    built: list[object] = []
    build = RetryPolicy.retries

    def counting(
        policy: RetryPolicy, before_retry: Callable[[RetryableAttempt], None]
    ) -> AsyncRetrying:
        built.append(before_retry)
        return build(policy, before_retry)

    monkeypatch.setattr(RetryPolicy, "retries", counting)
    settings = ProxySettings(
        zai_api_key=SecretStr(TEST_KEY),
        zai_target_url=f"{upstream.url}/api/paas/v4",
        retry_backoff_base=0.01,
    )
    app = ProxyApp(settings, LimiterSettings(rate_limit_initial=1000, rate_limit_max=10_000))
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # scope: a dict
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            headers = {"x-sim-key": new_id(), "x-request-id": new_id()}
            if failures:
                headers |= {"x-sim-fail-first": str(failures), "x-sim-zai-code": "1305"}
            response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    finally:
        await app.shutdown()
        gc.unfreeze()  # startup froze this process's objects, as it does a proxy's
    assert response.status_code == 200
    assert seen_by_upstream(upstream, headers["x-request-id"])["seen"] == failures + 1
    assert len(built) == loops
