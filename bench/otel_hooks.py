"""The tracing hooks of one request, in-process: CPU µs per request, sampled or not, with
the GenAI metrics over OTLP on or off (issue 16; docs/performance.md).

Runs the forwarder's calls of a non-streamed chat request (begin, routed, admitting,
attempt, attempt_done, end) ``--requests`` times against a ProxyTracer exporting to a
sink on loopback, as bench/otel_bench.py's proxies do, and prints the process CPU time per
request of each case. Under ``py-spy record`` it shows where that time goes:

    .venv/bin/py-spy record -o hooks.txt -f raw -- .venv/bin/python bench/otel_hooks.py \
        --case "unsampled, metrics on"
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from http.server import ThreadingHTTPServer

from otel_bench import SIDES, _Sink, patched_env  # bench/ on sys.path

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


def run(case: str, requests: int, endpoint: str) -> float:
    """CPU seconds per request of the hooks in one case."""
    from zai_proxy.proxy.tracing import ProxyTracer

    with patched_env({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, **CASES[case]}):
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
    spent = time.process_time() - start
    telemetry.shutdown()
    return spent / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--case", choices=list(CASES), action="append")
    args = parser.parse_args()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    print(f"  load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for case in args.case or list(CASES):
        print(f"  {case:<24}{run(case, args.requests, endpoint) * 1e6:8.1f} µs CPU / request")
    sink.shutdown()


if __name__ == "__main__":
    main()
