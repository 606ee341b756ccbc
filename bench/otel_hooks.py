"""The tracing hooks of one request, in-process: CPU µs per request, sampled or not, with
the GenAI metrics over OTLP on or off (issue 16; docs/performance.md).

Runs the forwarder's calls of a non-streamed chat request (begin, routed, admitting,
attempt, attempt_done, end) ``--requests`` times against a ProxyTracer exporting to a
sink on loopback, as bench/otel_bench.py's proxies do, and prints of each case the CPU
time per request of this process (the hooks and the handoff thread) and of the span
export process (services/shared/span_export.py: rebuilding the SDK's spans, the batch
processor, the OTLP exporter's encoding), with the spans the sink received. The queue is
made large enough that nothing is dropped (the loop runs far faster than a proxy serves).
Under ``py-spy record`` it shows where this process's time goes:

    .venv/bin/py-spy record -o hooks.txt -f raw -- .venv/bin/python bench/otel_hooks.py \
        --case "unsampled, metrics on"
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from otel_bench import SIDES, patched_env, sink  # bench/ on sys.path

from zai_proxy.proxy.accounting import Request
from zai_proxy.proxy.forwarding import Exchange
from zai_proxy.proxy.limiting import Ticket
from zai_proxy.proxy.routing import Route
from zai_proxy.proxy.usage import RequestInfo, Usage
from zai_proxy.shared.outcomes import Outcome
from zai_proxy.shared.telemetry import telemetry_from_env

CASES = {
    "unsampled, metrics on": {**SIDES["on 10%"], "OTEL_TRACES_SAMPLER_ARG": "0"},
    "unsampled, metrics off": {
        **SIDES["on 10%"],
        "OTEL_TRACES_SAMPLER_ARG": "0",
        "OTEL_METRICS_EXPORTER": "none",
    },
    "sampled, metrics on": SIDES["on 100%"],
    "sampled, metrics off": {**SIDES["on 100%"], "OTEL_METRICS_EXPORTER": "none"},
}
SCOPE = {"headers": [(b"host", b"proxy"), (b"authorization", b"Bearer x")]}
HEADERS = [("content-type", "application/json"), ("authorization", "Bearer up")]


def children_cpu() -> float:
    """CPU seconds of the child processes waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(case: str, requests: int, endpoint: str) -> tuple[float, float]:
    """CPU seconds of the hooks in one case, and of the export process (its start-up too)."""
    from zai_proxy.proxy.tracing import ProxyTracer

    queue = str(max(4 * requests, 2048))
    exported_before = children_cpu()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_MAX_QUEUE_SIZE": queue}
    with patched_env({**env, **CASES[case]}):
        telemetry = telemetry_from_env("zai-proxy", export="process")
    assert telemetry is not None
    tracer = ProxyTracer(
        telemetry,
        provider="zai",
        variant="production",
        upstreams={"openai": "http://up:8000/v4", "anthropic": "http://up:8000/anthropic"},
    )
    route = Route("openai", "http://up:8000/v4/chat/completions", "/v1/chat/completions")
    info = RequestInfo(model="glm-4.6", stream=False, include_usage=False, parsed=None)
    ticket = Ticket(lease="l", waited=0.0, local=False)
    usage = Usage(input=120, output=300, cache_read=20)
    start = time.process_time()
    for _ in range(requests):
        exchange = Exchange(start=0.0, method="POST", request_id="r", model="glm-4.6")
        exchange.template, exchange.key = route.template, "team-a"
        exchange.request = Request(body=None, info=info)  # type: ignore[arg-type]
        trace = tracer.begin(SCOPE)
        facts = trace.routed(route)
        trace.admitting()
        trace.attempt(route, "POST", ticket, HEADERS, pool="default", key="default")
        exchange.status, exchange.started, exchange.finished = 200, True, True
        if facts is not None:
            facts.feed(
                {"id": "chatcmpl-1", "model": "glm-4.6", "choices": [{"finish_reason": "stop"}]}
            )
        trace.attempt_done(exchange, Outcome.OK)
        exchange.usage, exchange.usage_source = usage, "usage"
        trace.end(exchange, 0.05)
    telemetry.shutdown()  # the last handoff is this process's; the export, the child's
    spent = time.process_time() - start
    return spent, children_cpu() - exported_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--case", choices=list(CASES), action="append")
    args = parser.parse_args()
    print(f"  load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  {'case':<24}{'hooks µs':>9}{'export µs':>11}  spans received")
    server = sink()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    # The export process's start (importing the SDK and the exporter), charged to none.
    _, started = run("sampled, metrics off", 0, endpoint)
    print(f"  (the export process's start-up: {started * 1e3:.0f} ms CPU, left out below)")
    for case in args.case or list(CASES):
        server.spans = 0
        hooks, export = run(case, args.requests, endpoint)
        spans = server.spans
        hooks_us, export_us = hooks / args.requests * 1e6, (export - started) / args.requests * 1e6
        print(f"  {case:<24}{hooks_us:9.1f}{export_us:11.1f}  {spans}")
    server.shutdown()


if __name__ == "__main__":
    main()
