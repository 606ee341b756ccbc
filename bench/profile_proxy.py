"""Where the proxy's CPU goes under load: py-spy samples, summed by component.

Starts the simulator and one proxy process (as bench/proxy_bench.py does), warms up,
then drives non-streamed ~1.2 KB chat answers with wrk (c=32 by default) while
``py-spy record`` samples the proxy. Each sample is charged to the first component
found walking its stack from the innermost frame out (prometheus_client before
aiohttp before uvicorn ...), so a component's share includes the library code it calls
but not the proxy code that calls it. Also prints the busiest functions by own time.

With --gc the proxy runs under a thin wrapper that times every garbage collection
(``gc.callbacks``) and writes them out at exit; the report gives collections and GC time
per request by generation, and the longest pause (wall clock: on a busy machine a pause
also holds the time the process was descheduled in the middle of it).

    .venv/bin/pip install py-spy           # into the project's venv
    .venv/bin/python bench/profile_proxy.py [--connections 32] [--seconds 20] [--gc]
                                            [--access-log false] [--raw out.txt]

py-spy's own time is not in the proxy (--nonblocking: the proxy is never paused).
Time in C code (uvloop, httptools, orjson) is charged to the Python frame that called it;
uvloop's own loop work shows up as ``Runner.run``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import proxy_bench as bench

from zai_proxy.simulator.process import start_simulator

# First match walking a stack from the innermost frame outwards.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("metrics (prometheus_client, ProxyMetrics)", ("prometheus_client/", "proxy/metrics.py")),
    ("access log (logging)", ("logging/",)),
    (
        "token accounting (body parse, usage read)",
        ("proxy/accounting.py", "proxy/usage.py", "proxy/tokens.py", "Forwarder._count_tokens"),
    ),
    (
        "upstream client (aiohttp, yarl, multidict)",
        ("aiohttp/", "yarl/", "multidict/", "upstream.py"),
    ),
    ("limiter admission and reports", ("proxy/limiting.py", "zai_proxy/limiter/")),
    ("retry policy (tenacity)", ("tenacity/", "proxy/retries.py")),
    ("header rules and request id", ("proxy/headers.py", "uuid.py")),
    ("server HTTP (uvicorn, httptools)", ("uvicorn/", "httptools", "proxy/server.py")),
    ("proxy glue (forwarding, routing, admission, app)", ("zai_proxy/",)),
    ("event loop (uvloop, asyncio)", ("asyncio/", "uvloop/")),
)
OTHER = "other"

GC_WRAPPER = """
import gc, json, sys, time
events = []
start = [0]
def timer(phase, info):
    if phase == "start":
        start[0] = time.monotonic_ns()
    else:
        events.append((start[0], time.monotonic_ns() - start[0], info["generation"]))
gc.callbacks.append(timer)
from zai_proxy.cli import main
code = main(["proxy"])
with open(sys.argv[1], "w") as out:
    json.dump(events, out)
sys.exit(code)
"""


def component_of(stack: list[str]) -> str:
    """The component a sample is charged to (see COMPONENTS)."""
    for frame in reversed(stack):
        for name, needles in COMPONENTS:
            if any(needle in frame for needle in needles):
                return name
    return OTHER


def _function(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def summarise_profile(raw: Path, top: int) -> dict[str, object]:
    """Shares by component and the busiest functions (own time) of a py-spy raw file."""
    components: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        samples = int(count)
        total += samples
        components[component_of(frames)] += samples
        own[_function(frames[-1])] += samples
    return {
        "samples": total,
        "components": {k: v / total for k, v in components.most_common()},
        "own_time": {k: v / total for k, v in own.most_common(top)},
    }


def summarise_gc(path: Path, since_ns: int, until_ns: int, requests: int) -> dict[str, object]:
    """Collections, GC time per request and the longest pause, by generation."""
    events = [e for e in json.loads(path.read_text()) if since_ns <= e[0] <= until_ns]
    by_gen: dict[int, dict[str, float]] = {}
    for gen in (0, 1, 2):
        durations = [d for _, d, g in events if g == gen]
        by_gen[gen] = {
            "collections_per_1000_requests": len(durations) / requests * 1000,
            "us_per_request": sum(durations) / requests / 1000,
            "max_pause_ms": max(durations, default=0) / 1e6,
        }
    return {"requests": requests, "generations": by_gen}


def user_system_seconds(pid: int) -> tuple[float, float]:
    """CPU time a process has spent in user space and in the kernel, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def py_spy() -> str | None:
    """The py-spy executable (next to this Python first), or None with a hint."""
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Profile the proxy under wrk load.")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=20, help="length of the wrk run")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--access-log", choices=("true", "false"))
    parser.add_argument("--gc", action="store_true", help="also time garbage collections")
    parser.add_argument("--raw", help="keep py-spy's raw (collapsed) samples here")
    parser.add_argument("--top", type=int, default=20, help="functions to list")
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spy = py_spy()
    if spy is None or not bench.check_wrk():
        return 2
    raw = Path(args.raw or tempfile.mkstemp(prefix="proxy-profile-", suffix=".txt")[1])
    gc_file = Path(tempfile.mkstemp(prefix="proxy-gc-", suffix=".json")[1])
    command = (sys.executable, "-c", GC_WRAPPER, str(gc_file)) if args.gc else bench.PROXY_COMMAND
    config = bench.BenchConfig(sections=(), access_log=args.access_log)
    log = Path(tempfile.mkstemp(prefix="proxy-profile-", suffix=".log")[1])
    threads = 1 if args.connections == 1 else 2
    with start_simulator() as sim, bench.simulator_proxy(sim, config, log, command) as proxy:
        url = f"{proxy.url}/v1/chat/completions"
        bench.run_wrk(url, 32, 2, 3)  # warm-up
        before, since = bench.requests_served(proxy), time.monotonic_ns()
        user_before, system_before = user_system_seconds(proxy.pid)
        record = [spy, "record", "--pid", str(proxy.pid), "--nonblocking", "-f", "raw"]
        record += ["-r", str(args.rate), "-d", str(max(1, args.seconds - 2)), "-o", str(raw)]
        sampler = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        result = bench.run_wrk(url, args.connections, threads, args.seconds, {"proxy": proxy.pid})
        sampler.wait()
        until = time.monotonic_ns()
        user, system = user_system_seconds(proxy.pid)
        user, system = user - user_before, system - system_before
        requests = bench.requests_served(proxy) - before
        # The proxy has exited here, so the GC wrapper has written its file.
    summary: dict[str, object] = {
        "connections": args.connections,
        "access_log": args.access_log or "default (true)",
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "proxy_cpu_us_per_request": result.cpu_us["proxy"],
        "kernel_share": system / (user + system),
        "other_cores": result.other_cores,
        "profile": summarise_profile(raw, args.top),
    }
    if args.gc:
        summary["gc"] = summarise_gc(gc_file, since, until, requests)
    print_summary(summary)
    print(f"\nraw samples: {raw}")
    gc_file.unlink()
    log.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def print_summary(summary: dict[str, object]) -> None:
    """The load figures, the component shares, the busiest functions, GC."""
    print(
        f"c={summary['connections']} access_log={summary['access_log']}: "
        f"{summary['rps']:,.0f} req/s, p50 {summary['p50_ms']:.3f} ms, "
        f"p99 {summary['p99_ms']:.3f} ms, proxy CPU "
        f"{summary['proxy_cpu_us_per_request']:.0f} µs/request "
        f"({summary['kernel_share']:.0%} of it in the kernel); "
        f"other processes kept {summary['other_cores']:.2f} cores busy"
    )
    profile = summary["profile"]
    assert isinstance(profile, dict)
    print(f"\nshare of {profile['samples']} samples, by component")
    for name, share in profile["components"].items():
        print(f"  {share * 100:5.1f}%  {name}")
    print("\nbusiest functions, own time")
    for name, share in profile["own_time"].items():
        print(f"  {share * 100:5.1f}%  {name}")
    gc_summary = summary.get("gc")
    if isinstance(gc_summary, dict):
        print(f"\ngarbage collection over {gc_summary['requests']:,} requests")
        for gen, figures in gc_summary["generations"].items():
            print(
                f"  gen {gen}: {figures['collections_per_1000_requests']:6.1f} per 1,000 "
                f"requests, {figures['us_per_request']:6.1f} µs/request, "
                f"longest pause {figures['max_pause_ms']:.2f} ms (wall clock)"
            )


if __name__ == "__main__":
    sys.exit(main())
