"""OpenTelemetry through a real proxy: spans and GenAI metrics received by a real OTLP/HTTP
receiver (tests/otlp.py), traceparent as the simulated upstream received it."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.otlp import OTLPReceiver, Span
from tests.support import TEST_KEY, ServiceProcess, free_port, start_proxy, wait_until
from zai_proxy.proxy.tracing import DURATION_BUCKETS, TOKEN_BUCKETS
from zai_proxy.simulator.process import SimulatorProcess

CLIENT_KEY = "sk-client-team-a-0123456789abcdef"
# Export at once: the tests wait for what they sent, not for the SDK's 5-s batches.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_METRIC_EXPORT_INTERVAL": "300"}
DIALECTS = ["openai", "anthropic"]


@pytest.fixture(scope="module")
def otlp() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        yield receiver


def traced_env(otlp: OTLPReceiver, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, **FAST_EXPORT, **extra}


@pytest.fixture(scope="module")
def proxy(upstream: SimulatorProcess, otlp: OTLPReceiver) -> Iterator[ServiceProcess]:
    env = traced_env(
        otlp,
        PROXY_API_KEYS=f"team-a:{CLIENT_KEY}",
        DEPLOYMENT_VARIANT="canary",
        OTEL_SERVICE_NAME="proxy-under-test",
        MAX_RETRIES="2",
        RETRY_BACKOFF_BASE="0.05",
        RATE_LIMIT_MIN="1000",
    )
    with start_proxy(upstream.url, env=env) as service:
        yield service


def new_traceparent(flags: str = "01") -> tuple[str, str, str]:
    """A client's traceparent, with its trace id and span id."""
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-{flags}", trace_id, span_id


def call(
    proxy: ServiceProcess,
    dialect: str,
    *,
    stream: bool = False,
    sim: dict[str, str] | None = None,
    traceparent: str | None = None,
    model: str = "glm-4.6",
) -> tuple[httpx.Response, str]:
    """One chat request in a dialect, as a client with the team-a key sends it."""
    request_id = uuid.uuid4().hex
    headers = {"x-request-id": request_id, **(sim or {})}
    if traceparent:
        headers["traceparent"] = traceparent
    messages = [{"role": "user", "content": "hello there"}]
    if dialect == "openai":
        headers["authorization"] = f"Bearer {CLIENT_KEY}"
        path = "/v1/chat/completions"
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
    else:
        headers["x-api-key"] = CLIENT_KEY
        path = "/v1/messages"
        body = {"model": model, "max_tokens": 64, "messages": messages, "stream": stream}
    response = httpx.post(f"{proxy.url}{path}", json=body, headers=headers, timeout=30)
    return response, request_id


def seen_by_client(dialect: str, response: httpx.Response) -> dict[str, Any]:
    """Id, model, finish reasons and usage as the client read them from the answer."""
    if "text/event-stream" not in response.headers.get("content-type", ""):
        events = [response.json()]
    else:
        events = [
            orjson.loads(line[5:])
            for line in response.text.splitlines()
            if line.startswith("data:") and line[5:].strip() != "[DONE]"
        ]
    seen: dict[str, Any] = {"finish": [], "cache_write": 0}
    for event in events:
        if dialect == "openai":
            seen.setdefault("id", event.get("id"))
            seen.setdefault("model", event.get("model"))
            for choice in event.get("choices") or []:
                if choice.get("finish_reason"):
                    seen["finish"].append(choice["finish_reason"])
            usage = event.get("usage")
            if usage:
                seen["input"] = usage["prompt_tokens"]
                seen["output"] = usage["completion_tokens"]
                seen["cache_read"] = usage["prompt_tokens_details"]["cached_tokens"]
            continue
        message = event.get("message") if event.get("type") == "message_start" else event
        if message.get("type") == "message":
            seen["id"], seen["model"] = message["id"], message["model"]
            if message.get("stop_reason"):
                seen["finish"].append(message["stop_reason"])
        if event.get("type") == "message_delta" and event["delta"].get("stop_reason"):
            seen["finish"].append(event["delta"]["stop_reason"])
        usage = message.get("usage") or event.get("usage")
        if usage and "input_tokens" in usage:
            seen["cache_read"] = usage.get("cache_read_input_tokens") or 0
            seen["cache_write"] = usage.get("cache_creation_input_tokens") or 0
            seen["input"] = usage["input_tokens"] + seen["cache_read"] + seen["cache_write"]
        if usage and "output_tokens" in usage:
            seen["output"] = usage["output_tokens"]
    return seen


def server_span(otlp: OTLPReceiver, trace_id: str) -> tuple[Span, list[Span]]:
    """The proxy's SERVER span of a trace and the spans under it, once all arrived."""

    def complete() -> tuple[Span, list[Span]] | None:
        spans = otlp.trace(trace_id)
        servers = [span for span in spans if span.kind == "server"]
        if not servers:
            return None
        children = sorted(
            (span for span in spans if span.parent_id == servers[0].span_id),
            key=lambda span: span.start,
        )
        attempts = servers[0].attributes.get("zai_proxy.upstream.attempts", 0)
        if sum(span.kind == "client" for span in children) < attempts:
            return None
        return servers[0], children

    return otlp.wait_for(lambda _: complete())


def upstream_traceparents(upstream: SimulatorProcess, request_id: str) -> list[str]:
    record = httpx.get(f"{upstream.url}/_sim/requests/{request_id}").json()
    return [value for name, value in record["headers"] if name == "traceparent"]


def assert_no_secret(spans: list[Span]) -> None:
    for span in spans:
        text = repr(span.attributes) + repr(span.events) + repr(span.resource)
        assert CLIENT_KEY not in text and TEST_KEY not in text, span.name


def expected_genai(dialect: str, seen: dict[str, Any], stream: bool) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "zai",
        "gen_ai.request.model": "glm-4.6",
        "gen_ai.response.model": seen["model"],
        "gen_ai.response.id": seen["id"],
        "gen_ai.response.finish_reasons": seen["finish"],
        "gen_ai.request.stream": stream,
        "gen_ai.usage.input_tokens": seen["input"],
        "gen_ai.usage.output_tokens": seen["output"],
        "gen_ai.usage.cache_read.input_tokens": seen["cache_read"],
        "gen_ai.usage.cache_creation.input_tokens": seen["cache_write"],
        "zai_proxy.usage.source": "usage",
        "zai_proxy.variant": "canary",
        "zai_proxy.client.alias": "team-a",
        "http.route": "/v1/chat/completions" if dialect == "openai" else "/v1/messages",
        "http.response.status_code": 200,
    }


USAGE_SCRIPT = {
    "x-sim-prompt-tokens": "40",
    "x-sim-completion-tokens": "9",
    "x-sim-cached-tokens": "12",
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_request_is_one_server_span_with_the_usage_the_client_saw(
    proxy: ServiceProcess,
    upstream: SimulatorProcess,
    otlp: OTLPReceiver,
    dialect: str,
    stream: bool,
) -> None:
    script = dict(USAGE_SCRIPT)
    if dialect == "anthropic":
        script["x-sim-cache-creation-tokens"] = "5"
    traceparent, trace_id, client_span = new_traceparent()
    response, request_id = call(proxy, dialect, stream=stream, sim=script, traceparent=traceparent)
    assert response.status_code == 200
    seen = seen_by_client(dialect, response)
    assert seen["input"] > seen["cache_read"] > 0 and seen["output"] == 9
    server, children = server_span(otlp, trace_id)

    # The client's trace is continued: same trace, the client's span is the parent.
    assert server.parent_id == client_span
    assert server.name == "chat glm-4.6"
    assert server.resource["service.name"] == "proxy-under-test"
    expected = expected_genai(dialect, seen, stream)
    assert {name: server.attributes.get(name) for name in expected} == expected
    assert "error.type" not in server.attributes and server.status == 0
    address, port = upstream.url.removeprefix("http://").split(":")
    assert (server.attributes["server.address"], server.attributes["server.port"]) == (
        address,
        int(port),
    )
    ttfb = server.attributes["zai_proxy.time_to_first_byte"]
    assert 0 < ttfb <= server.seconds

    # One CLIENT span for the one attempt, and the upstream got its traceparent (only it).
    (attempt,) = children
    assert attempt.kind == "client" and attempt.trace_id == trace_id
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["zai_proxy.upstream.outcome"] == "ok"
    assert attempt.attributes["server.port"] == int(port)
    assert server.start <= attempt.start <= attempt.end <= server.end
    assert upstream_traceparents(upstream, request_id) == [f"00-{trace_id}-{attempt.span_id}-01"]
    assert_no_secret([server, attempt])
    # Content is not captured unless asked for.
    assert not any(name.endswith("messages") for name in server.attributes)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_retried_request_has_a_client_span_per_attempt_with_the_429s_class(
    proxy: ServiceProcess, upstream: SimulatorProcess, otlp: OTLPReceiver, dialect: str
) -> None:
    script = {
        "x-sim-fail-first": "1",
        "x-sim-key": uuid.uuid4().hex,
        "x-sim-zai-code": "1305",
        "x-sim-retry-after": "0",
        "x-sim-error-shape": dialect,
        **USAGE_SCRIPT,
    }
    traceparent, trace_id, _ = new_traceparent()
    response, request_id = call(proxy, dialect, stream=True, sim=script, traceparent=traceparent)
    assert response.status_code == 200
    seen = seen_by_client(dialect, response)
    server, children = server_span(otlp, trace_id)
    first, second = (span for span in children if span.kind == "client")
    assert first.attributes["http.response.status_code"] == 429
    assert first.attributes["zai_proxy.upstream.outcome"] == "rate_frequency"
    assert first.attributes["error.type"] == "rate_frequency" and first.status == 2
    assert first.attributes["zai_proxy.upstream.retry_after"] == 0
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["zai_proxy.retry.reason"] == "rate_frequency"
    assert second.attributes["http.response.status_code"] == 200
    assert first.end <= second.start
    assert server.attributes["zai_proxy.upstream.attempts"] == 2
    assert server.attributes["gen_ai.usage.output_tokens"] == seen["output"] == 9
    assert server.attributes["gen_ai.usage.input_tokens"] == seen["input"]
    assert "error.type" not in server.attributes
    # The simulator keeps the last attempt's headers: the retry's own span is its parent.
    assert upstream_traceparents(upstream, request_id) == [f"00-{trace_id}-{second.span_id}-01"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_failed_upstream_answer_sets_error_type_on_both_spans(
    proxy: ServiceProcess, otlp: OTLPReceiver, dialect: str
) -> None:
    traceparent, trace_id, _ = new_traceparent()
    response, _ = call(proxy, dialect, sim={"x-sim-status": "500"}, traceparent=traceparent)
    assert response.status_code == 500
    server, children = server_span(otlp, trace_id)
    assert server.attributes["error.type"] == "server_error" and server.status == 2
    assert server.attributes["http.response.status_code"] == 500
    assert server.attributes["zai_proxy.usage.source"] == "none"
    assert "gen_ai.usage.input_tokens" not in server.attributes
    (attempt,) = children
    assert attempt.attributes["error.type"] == "server_error"
    assert attempt.attributes["http.response.status_code"] == 500


def test_a_request_without_traceparent_starts_a_trace_and_propagates_it(
    proxy: ServiceProcess, upstream: SimulatorProcess, otlp: OTLPReceiver
) -> None:
    response, request_id = call(proxy, "openai")
    assert response.status_code == 200
    (sent,) = upstream_traceparents(upstream, request_id)
    version, trace_id, span_id, flags = sent.split("-")
    # Sampled (and, as the SDK marks a trace id it drew, random: W3C level 2).
    assert version == "00" and int(flags, 16) & 1 and trace_id != "0" * 32
    server, (attempt,) = server_span(otlp, trace_id)
    assert server.parent_id == "" and attempt.span_id == span_id

    # The access log line (written once the answer is out) leads to the trace.
    def logged() -> list[str]:
        return [line for line in proxy.log().splitlines() if request_id in line]

    wait_until(logged, 10.0)
    (line,) = logged()
    assert line.endswith(f"trace_id={trace_id}")


def test_an_unsampled_parent_is_propagated_and_nothing_is_exported(
    proxy: ServiceProcess, upstream: SimulatorProcess, otlp: OTLPReceiver
) -> None:
    traceparent, trace_id, client_span = new_traceparent(flags="00")
    response, request_id = call(proxy, "anthropic", traceparent=traceparent)
    assert response.status_code == 200
    (sent,) = upstream_traceparents(upstream, request_id)
    assert sent.startswith(f"00-{trace_id}-") and sent.endswith("-00")
    assert client_span not in sent  # the proxy's own span, not the client's
    # A sampled request sent after it arrives; the unsampled one never does.
    sampled, later, _ = new_traceparent()
    call(proxy, "anthropic", traceparent=sampled)
    server_span(otlp, later)
    assert otlp.trace(trace_id) == []


def test_other_routes_get_http_server_spans(proxy: ServiceProcess, otlp: OTLPReceiver) -> None:
    traceparent, trace_id, _ = new_traceparent()
    response = httpx.get(
        f"{proxy.url}/v1/models",
        headers={"authorization": f"Bearer {CLIENT_KEY}", "traceparent": traceparent},
    )
    assert response.status_code == 200
    server, _ = server_span(otlp, trace_id)
    assert server.name == "GET /v1/models"
    assert "gen_ai.operation.name" not in server.attributes


def latest(otlp: OTLPReceiver, metric: str, **attributes: Any) -> Any:
    points = [
        point
        for point in otlp.points()
        if point.metric == metric
        and all(point.attributes.get(k) == v for k, v in attributes.items())
    ]
    return points[-1] if points else None


def test_genai_metrics_count_tokens_and_durations_in_the_conventions_buckets(
    proxy: ServiceProcess, otlp: OTLPReceiver
) -> None:
    model = f"glm-metrics-{uuid.uuid4().hex[:6]}"
    for dialect in DIALECTS:
        response, _ = call(proxy, dialect, sim=USAGE_SCRIPT, model=model)
        assert response.status_code == 200

    def settled(kind: str) -> Any:
        point = latest(
            otlp, "gen_ai.client.token.usage", **{"gen_ai.request.model": model,
                                                  "gen_ai.token.type": kind}
        )  # fmt: skip
        return point if point is not None and point.count == 2 else None

    output = otlp.wait_for(lambda _: settled("output"))
    assert output.sum == 18 and output.unit == "{token}"
    assert output.bounds == list(TOKEN_BUCKETS)
    assert output.attributes["gen_ai.operation.name"] == "chat"
    assert output.attributes["gen_ai.provider.name"] == "zai"
    assert otlp.wait_for(lambda _: settled("input")).sum >= 2 * 40
    duration = latest(otlp, "gen_ai.client.operation.duration", **{"gen_ai.request.model": model})
    assert duration.count == 2 and duration.unit == "s"
    assert duration.bounds == list(DURATION_BUCKETS)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_proxy_429_and_a_limiter_wait_are_on_the_trace(
    upstream: SimulatorProcess, otlp: OTLPReceiver, dialect: str
) -> None:
    # 1 request/s and no burst: of three at once, one goes now, one after a second's wait,
    # and the third would wait two, beyond RATE_LIMIT_MAX_WAIT: the proxy answers it 429.
    env = traced_env(
        otlp,
        RATE_LIMIT_INITIAL="1",
        RATE_LIMIT_MIN="1",
        RATE_LIMIT_MAX="1",
        RATE_LIMIT_BURST="0",
        RATE_LIMIT_MAX_WAIT="1.5",
    )
    with start_proxy(upstream.url, env=env) as limited:
        parents = [new_traceparent() for _ in range(3)]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda p: call(limited, dialect, traceparent=p[0])[0], parents))
        traces = [server_span(otlp, trace_id) for _, trace_id, _ in parents]
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200, 200, 429], statuses
    by_status: dict[int, list[tuple[Span, list[Span]]]] = {}
    for server, children in traces:
        by_status.setdefault(server.attributes["http.response.status_code"], []).append(
            (server, children)
        )
    (refused, refused_children), = by_status[429]  # fmt: skip
    assert refused.attributes["error.type"] == "proxy_rate_limited" and refused.status == 2
    assert [span.kind for span in refused_children] == ["internal"]  # no attempt went out
    assert refused_children[0].attributes["zai_proxy.limiter.refused"] is True
    waits = [
        child
        for _, children in by_status[200]
        for child in children
        if child.name == "limiter wait"
    ]
    (wait,) = waits
    assert 0.5 < wait.attributes["zai_proxy.limiter.wait"] < 1.5
    assert wait.attributes["zai_proxy.limiter.pool"]
    assert wait.attributes["zai_proxy.limiter.refused"] is False


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_unreachable_upstream_fails_with_error_type_on_every_attempt(
    otlp: OTLPReceiver, dialect: str
) -> None:
    env = traced_env(otlp, MAX_RETRIES="1", RETRY_BACKOFF_BASE="0.05")
    with start_proxy(f"http://127.0.0.1:{free_port()}", env=env) as proxy:
        traceparent, trace_id, _ = new_traceparent()
        response, _ = call(proxy, dialect, traceparent=traceparent)
        server, children = server_span(otlp, trace_id)
    assert response.status_code == 502
    assert server.attributes["error.type"] == "upstream_unavailable" and server.status == 2
    attempts = [span for span in children if span.kind == "client"]
    assert len(attempts) == 2
    assert all(span.attributes["error.type"] == "network" for span in attempts)
    assert attempts[1].attributes["zai_proxy.retry.reason"] == "network"


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def export_process(proxy: ServiceProcess) -> int:
    """The pid of the proxy's span export process (services/shared/span_export.py)."""

    pid = proxy.process.pid
    children: list[str] = []

    def started() -> bool:
        # Listed under the thread that started it (a restart is the handoff thread's).
        children[:] = [
            child
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
        return len(children) == 1

    wait_until(started, 10.0)
    return int(children[0])


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def hammer(proxy: ServiceProcess, count: int, workers: int = 8) -> list[float]:
    """``count`` chat requests over ``workers`` connections; each one's seconds."""
    body = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}

    def run(n: int) -> list[float]:
        times = []
        with httpx.Client(timeout=10) as client:
            for _ in range(n):
                start = time.perf_counter()
                response = client.post(f"{proxy.url}/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
                times.append(time.perf_counter() - start)
        return times

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        runs = list(pool.map(run, [count // workers] * workers))
    return [t for times in runs for t in times]


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["down", "slow"])
def test_an_exporter_endpoint_down_or_slow_never_holds_a_request_and_memory_stays_bounded(
    upstream: SimulatorProcess, endpoint: str
) -> None:
    with OTLPReceiver(delay=5.0) as slow:
        url = slow.url if endpoint == "slow" else f"http://127.0.0.1:{free_port()}"
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": url,
            "OTEL_BSP_MAX_QUEUE_SIZE": "256",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "5",
            "ACCESS_LOG": "false",
        }
        with start_proxy(upstream.url, env=env) as proxy:
            exporter = export_process(proxy)
            hammer(proxy, 400)  # warm: pools, caches, the queue filled
            before = rss_kib(proxy.process.pid), rss_kib(exporter)
            times = hammer(proxy, 4000)
            after = rss_kib(proxy.process.pid), rss_kib(exporter)
            log = proxy.log()
    # A span is some kilobytes: 4,000 of them kept would be tens of megabytes, in the
    # proxy or in the process that exports them.
    assert after[0] - before[0] < 12 * 1024, (before, after)
    assert after[1] - before[1] < 12 * 1024, (before, after)
    assert max(times) < 2.0, max(times)
    warnings = [line for line in log.splitlines() if "span queue full" in line]
    assert 1 <= len(warnings) <= 2, warnings  # thinned, not one line per dropped span


def test_spans_queued_at_shutdown_go_out_before_the_proxy_exits(
    upstream: SimulatorProcess, otlp: OTLPReceiver
) -> None:
    # The SDK's default schedule: a span would wait 5 s for its batch, the proxy stops first.
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "5000"}
    with start_proxy(upstream.url, env=env) as proxy:
        exporter = export_process(proxy)
        traceparent, trace_id, _ = new_traceparent()
        response, _ = call(proxy, "openai", traceparent=traceparent)
        assert response.status_code == 200
        assert proxy.stop() == 0
    server, (attempt,) = server_span(otlp, trace_id)
    assert server.kind == "server" and attempt.kind == "client"
    # The export process ends with the proxy: none is left behind.
    wait_until(lambda: not alive(exporter), 5.0)


def test_an_export_process_that_dies_is_started_again(
    upstream: SimulatorProcess, otlp: OTLPReceiver
) -> None:
    with start_proxy(upstream.url, env=traced_env(otlp)) as proxy:
        first = export_process(proxy)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not alive(first), 5.0)

        # Spans finished while it was down are lost (counted); those after the restart
        # delay (span_export.RESTART_SECONDS) arrive through a new one.
        def delivered() -> bool:
            traceparent, trace_id, _ = new_traceparent()
            assert call(proxy, "openai", traceparent=traceparent)[0].status_code == 200
            time.sleep(0.5)
            return bool(otlp.trace(trace_id))

        wait_until(delivered, 20.0)
        assert export_process(proxy) != first
        assert "the span exporter process exited" in proxy.log()


def test_without_an_endpoint_no_tracing_is_loaded_or_started() -> None:
    # (FastAPI imports OpenTelemetry's API, and redis-py its metrics SDK, by themselves
    # when installed; the tracing SDK, the exporters and their threads are what an
    # endpoint would start.)
    script = (
        "import asyncio, sys\n"
        "from zai_proxy.proxy.app import create_app\n"
        "app = create_app()\n"
        "async def main():\n"
        "    await app.startup()\n"
        "    assert app.forwarder.tracer is None\n"
        "    await app.shutdown()\n"
        "asyncio.run(main())\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry', 'zai_proxy'))]\n"
        "unwanted = ('opentelemetry.sdk.trace', 'opentelemetry.exporter',\n"
        "            'zai_proxy.proxy.tracing')\n"
        "assert not [m for m in loaded if m.startswith(unwanted)], loaded\n"
        "import threading\n"
        "assert not [t for t in threading.enumerate() if 'Otel' in t.name]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(ZAI_API_KEY=TEST_KEY, REDIS_URL="", ACCESS_LOG="false")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def text_seen_by_client(dialect: str, response: httpx.Response) -> str:
    """The answer's text as the client read it, whole or streamed."""
    if "text/event-stream" not in response.headers.get("content-type", ""):
        answer = response.json()
        if dialect == "openai":
            return answer["choices"][0]["message"]["content"]
        return "".join(block["text"] for block in answer["content"] if block["type"] == "text")
    text = []
    for line in response.text.splitlines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        event = orjson.loads(line[5:])
        if dialect == "openai":
            text += [c["delta"].get("content") or "" for c in event.get("choices") or []]
        elif event.get("type") == "content_block_delta":
            text.append(event["delta"].get("text", ""))
    return "".join(text)


@pytest.fixture(scope="module")
def capturing(upstream: SimulatorProcess, otlp: OTLPReceiver) -> Iterator[ServiceProcess]:
    env = traced_env(
        otlp,
        PROXY_API_KEYS=f"team-a:{CLIENT_KEY}",
        OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true",
    )
    with start_proxy(upstream.url, env=env) as service:
        yield service


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_opted_in_content_capture_puts_the_messages_on_the_span(
    capturing: ServiceProcess, otlp: OTLPReceiver, dialect: str, stream: bool
) -> None:
    traceparent, trace_id, _ = new_traceparent()
    response, _ = call(capturing, dialect, stream=stream, traceparent=traceparent)
    assert response.status_code == 200
    server, _ = server_span(otlp, trace_id)
    inputs = orjson.loads(server.attributes["gen_ai.input.messages"])
    assert inputs == [{"role": "user", "parts": [{"type": "text", "content": "hello there"}]}]
    (output,) = orjson.loads(server.attributes["gen_ai.output.messages"])
    assert output["role"] == "assistant"
    assert output["parts"] == [{"type": "text", "content": text_seen_by_client(dialect, response)}]
    assert output["parts"][0]["content"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_with_token_counting_off_the_span_still_says_what_the_answer_said(
    upstream: SimulatorProcess, otlp: OTLPReceiver, dialect: str, stream: bool
) -> None:
    env = traced_env(otlp, PROXY_API_KEYS=f"team-a:{CLIENT_KEY}", TOKEN_COUNTING_ENABLED="false")
    with start_proxy(upstream.url, env=env) as uncounted:
        traceparent, trace_id, _ = new_traceparent()
        response, _ = call(uncounted, dialect, stream=stream, traceparent=traceparent)
        assert response.status_code == 200
        server, _ = server_span(otlp, trace_id)
    seen = seen_by_client(dialect, response)
    assert server.attributes["gen_ai.response.id"] == seen["id"]
    assert server.attributes["gen_ai.response.model"] == seen["model"]
    assert server.attributes["gen_ai.response.finish_reasons"] == seen["finish"]
    # Nothing counted them: no usage on the span.
    assert server.attributes["zai_proxy.usage.source"] == "none"
    assert "gen_ai.usage.input_tokens" not in server.attributes


def test_spans_and_metrics_go_out_over_grpc_too(upstream: SimulatorProcess) -> None:
    with OTLPReceiver(protocol="grpc") as grpc_otlp:
        env = traced_env(
            grpc_otlp,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            PROXY_API_KEYS=f"team-a:{CLIENT_KEY}",
            DEPLOYMENT_VARIANT="canary",
        )
        with start_proxy(upstream.url, env=env) as proxy:
            traceparent, trace_id, client_span = new_traceparent()
            response, _ = call(proxy, "openai", sim=USAGE_SCRIPT, traceparent=traceparent)
            assert response.status_code == 200
            server, (attempt,) = server_span(grpc_otlp, trace_id)
            point = grpc_otlp.wait_for(
                lambda r: latest(r, "gen_ai.client.token.usage", **{"gen_ai.token.type": "output"})
            )
    seen = seen_by_client("openai", response)
    assert server.parent_id == client_span and server.name == "chat glm-4.6"
    expected = expected_genai("openai", seen, False)
    assert {name: server.attributes.get(name) for name in expected} == expected
    assert attempt.kind == "client" and attempt.attributes["http.response.status_code"] == 200
    assert (point.count, point.sum, point.bounds) == (1, 9, list(TOKEN_BUCKETS))
