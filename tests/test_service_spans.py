"""The limiter's, the collector's and the dashboard's own spans (a control step, a scrape
round, an SSE client), from `zai-proxy up` with an OTLP endpoint, at a real receiver
(tests/otlp.py): each service under its own service.name."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.otlp import OTLPReceiver, Span
from tests.support import ServiceProcess, launch_stack
from zai_proxy.limiter.controller import Decision
from zai_proxy.simulator.process import SimulatorProcess, start_simulator


@pytest.fixture(scope="module")
def otlp() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stack(otlp: OTLPReceiver) -> Iterator[ServiceProcess]:
    with start_simulator() as simulator:
        stack = launch_stack(simulator.url, env=stack_env(otlp, simulator))
        try:
            yield stack
        finally:
            stack.stop()


def stack_env(otlp: OTLPReceiver, simulator: SimulatorProcess) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "SCRAPE_INTERVAL": "1",
        "DASHBOARD_POLL_INTERVAL": "0.2",
        "DASHBOARD_SSE_HEARTBEAT": "0.5",
    }


def spans_of(otlp: OTLPReceiver, service: str, name: str) -> list[Span]:
    return [
        span
        for span in otlp.spans()
        if span.resource.get("service.name") == service and span.name == name
    ]


def chat(stack: ServiceProcess) -> None:
    response = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json={"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert response.status_code == 200


def test_a_limiter_control_step_is_a_span_with_an_event_per_pool_stepped(
    stack: ServiceProcess, otlp: OTLPReceiver
) -> None:
    chat(stack)

    def stepped() -> list[Span]:
        return [
            span
            for span in spans_of(otlp, "zai-limiter", "limiter control step")
            if span.attributes.get("zai_proxy.limiter.pools_stepped", 0) >= 1
        ]

    span = otlp.wait_for(lambda _: stepped(), timeout=20)[0]
    assert span.kind == "internal" and span.attributes["zai_proxy.limiter.node"]
    name, _, event = span.events[0]
    assert name == "pool stepped"
    assert event["zai_proxy.limiter.pool"]
    assert event["zai_proxy.limiter.decision"] in {d.value for d in Decision}
    assert event["zai_proxy.limiter.rate"] > 0 and event["zai_proxy.limiter.ticks"] >= 1


def test_a_collector_scrape_round_is_a_span_counting_its_targets(
    stack: ServiceProcess, otlp: OTLPReceiver
) -> None:
    def scraped() -> list[Span]:
        return [
            span
            for span in spans_of(otlp, "zai-collector", "collector scrape round")
            if span.attributes.get("zai_proxy.collector.scraped", 0) >= 1
        ]

    span = otlp.wait_for(lambda _: scraped(), timeout=20)[-1]
    attributes = span.attributes
    # `up` scrapes its proxy and its limiter; both answer.
    assert attributes["zai_proxy.collector.targets"] == attributes["zai_proxy.collector.scraped"]
    assert attributes["zai_proxy.collector.unresolved"] == 0
    assert attributes["zai_proxy.collector.snapshots"] >= 0
    assert span.status != 2 and span.events == []


def test_a_dashboard_sse_client_is_a_span_from_connect_to_close(
    stack: ServiceProcess, otlp: OTLPReceiver
) -> None:
    dashboard = f"http://127.0.0.1:{stack.env['DASHBOARD_PORT']}"
    chat(stack)
    with httpx.stream("GET", f"{dashboard}/api/events", timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: snapshot"):
                break
    # The server sees the client gone at its next write (a heartbeat within 0.5 s).
    (span,) = otlp.wait_for(lambda _: spans_of(otlp, "zai-dashboard", "GET /api/events"))
    assert span.kind == "server"
    assert span.attributes["http.route"] == "/api/events"
    assert span.attributes["client.address"].startswith("127.0.0.1:")
    assert span.attributes["zai_proxy.sse.events"] >= 1
    assert span.attributes["zai_proxy.sse.dropped"] is False
    assert "zai_proxy.sse.resumed_after" not in span.attributes
