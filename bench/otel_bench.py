"""Tracing off vs on: the proxy's req/s and latency at 32 connections, side by side.

Three proxies in front of one simulator: tracing off (no endpoint), on at 100% sampling
(``always_on``) and on at 10% (``traceidratio`` 0.1), both exporting over OTLP/HTTP to a
sink on loopback that reads each batch and answers 200 (the SDK's batch processor and
exporter, as in production; no collector's CPU in the figures). wrk (2 threads, 32
connections, bench/chat_completion.lua) runs against each in turn, the order rotated
every round, with a direct run at the simulator as the machine's noise reference; the
medians of the rounds are printed with each side's ratio to tracing off. Beside req/s,
each proxy's CPU time per request (utime + stime of its process, all threads: the batch
exporter's too), and beside it the CPU per request of the span export process the proxy
starts (services/shared/span_export.py: the SDK's batch processor and OTLP exporter, out of
the proxy's GIL; it runs on the other core): on a machine others load, req/s swing by
tens of percent from one run to the next, while CPU per request moves much less, and for
a proxy bound by its one core, off's CPU per request over a side's is the req/s ratio
that side can reach.

Targets (issue 16): on at 100% keeps >= 85% of off's req/s; at 10%, >= 95%.

    .venv/bin/python bench/otel_bench.py --rounds 5 --duration 8 [--json out.json]
        [--baseline ../before/.venv/bin/python]

``--baseline`` adds a side "before": a proxy run by another checkout's Python (a
worktree of the commit before tracing, with its own venv), for "off against before".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from proxy_bench import (  # bench/ on sys.path
    PROXY_COMMAND,
    BenchConfig,
    ProxyProcess,
    requests_served,
    run_wrk,
    simulator_proxy,
)

from zai_proxy.simulator.process import start_simulator

SIDES = {
    "off": {},
    "on 100%": {"OTEL_TRACES_SAMPLER": "always_on"},
    "on 10%": {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
}
TARGETS = {"on 100%": 0.85, "on 10%": 0.95}
_COUNT_LOCK = threading.Lock()


class SpanSink(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint on loopback that answers 200 and counts the spans sent."""

    spans = 0


def sink() -> SpanSink:
    """A SpanSink, serving."""
    server = SpanSink(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Sink(BaseHTTPRequestHandler):
    """Answers every export 200; counts the spans it was sent (``server.spans``)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.endswith("/v1/traces"):
            request = ExportTraceServiceRequest.FromString(body)
            count = sum(
                len(scope.spans) for spans in request.resource_spans for scope in spans.scope_spans
            )
            assert isinstance(self.server, SpanSink)
            with _COUNT_LOCK:
                self.server.spans += count
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    """os.environ with ``values`` laid over it (run_proxy passes os.environ on)."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (its span export process, with tracing on)."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.exists():
        return []
    return [int(one) for task in tasks.iterdir() for one in (task / "children").read_text().split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--baseline", metavar="PYTHON", help="another checkout's python")
    args = parser.parse_args()
    sides: dict[str, dict[str, str]] = dict(SIDES)
    if args.baseline:
        sides = {"before": {}, **sides}

    # One endpoint per traced side: the spans each one delivered, counted apart.
    sinks = {side: sink() for side in sides if side not in ("off", "before")}
    served: dict[str, int] = {}
    log = Path(tempfile.mkstemp(prefix="otel-bench-", suffix=".log")[1])
    config = BenchConfig(sections=("latency",), access_log="true")
    results: dict[str, list[dict[str, float]]] = {side: [] for side in ["direct", *sides]}
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(start_simulator())
        proxies: dict[str, ProxyProcess] = {}
        for side, extra in sides.items():
            traced = side not in ("off", "before")
            endpoint = f"http://127.0.0.1:{sinks[side].server_address[1]}" if traced else ""
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, **extra} if traced else {}
            command = (
                (args.baseline, "-m", "zai_proxy", "proxy") if side == "before" else PROXY_COMMAND
            )
            with patched_env(env):
                if not traced:
                    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
                proxies[side] = stack.enter_context(simulator_proxy(sim, config, log, command))
        urls = {"direct": f"{sim.url}/api/paas/v4/chat/completions"}
        urls.update({side: f"{p.url}/v1/chat/completions" for side, p in proxies.items()})
        for url in urls.values():
            run_wrk(url, 32, 2, 3)  # warm-up
        order = list(urls)
        for round_ in range(args.rounds):
            for side in order[round_ % len(order) :] + order[: round_ % len(order)]:
                pids = {side: proxies[side].pid} if side in proxies else {"direct": sim.process.pid}
                for n, child in enumerate(children(pids.get(side, 0))):
                    pids[f"export {n}"] = child
                result = run_wrk(urls[side], 32, 2, args.duration, pids=pids)
                cpu = result.cpu_us[side if side in proxies else "direct"]
                export = sum(v for k, v in result.cpu_us.items() if k.startswith("export"))
                results[side].append(
                    {
                        "rps": result.rps,
                        "p50_ms": result.p50_ms,
                        "p99_ms": result.p99_ms,
                        "cpu_us": cpu,
                        "export_us": export,
                        "load": os.getloadavg()[0],
                    }
                )
                print(
                    f"  round {round_ + 1} {side:<8} {result.rps:8.0f} req/s  "
                    f"p50 {result.p50_ms:7.3f}  p99 {result.p99_ms:7.3f} ms  "
                    f"{cpu:6.0f} µs CPU/req (+{export:4.0f} export)  "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        served = {side: requests_served(proxy) for side, proxy in proxies.items()}
    # The proxies have stopped: each exported what it held (within 5 s) before it exited.
    for server in sinks.values():
        server.shutdown()
    medians = {
        side: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for side, runs in results.items()
    }
    off, off_cpu = medians["off"]["rps"], medians["off"]["cpu_us"]
    print(f"\n  medians of {args.rounds} rounds, c=32, {args.duration} s each (log: {log})")
    print(
        f"  {'side':<9}{'req/s':>8}{'vs off':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU µs/req':>12}{'off/side':>10}{'export µs':>11}{'load':>6}"
    )
    for side, m in medians.items():
        ratio, cpu_ratio = m["rps"] / off, off_cpu / m["cpu_us"]
        target = TARGETS.get(side)
        verdict = "" if target is None else (" met" if ratio >= target else " MISSED")
        verdict = f"  (target >= {target:.0%}){verdict}" if target is not None else ""
        print(
            f"  {side:<9}{m['rps']:8.0f}{ratio:9.2f}{m['p50_ms']:9.3f}{m['p99_ms']:9.3f}"
            f"{m['cpu_us']:12.0f}{cpu_ratio:10.2f}{m['export_us']:11.0f}{m['load']:6.1f}{verdict}"
        )
    for side, server in sinks.items():
        spans = server.spans
        print(
            f"  {side}: {spans} spans received for {served[side]} requests "
            f"({spans / max(served[side], 1):.2f} a request)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": medians, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
