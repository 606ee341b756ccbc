"""Proxy vs direct, side by side, in one run: what the proxy adds and what it holds.

Sections (all by default; pick with --only):

  latency    Non-streamed ~1.2 KB chat answers over keep-alive, driven by wrk
             (bench/chat_completion.lua) at concurrency 1 (1 thread, 1 connection) and
             32 (2 threads, 32 connections), straight at the simulated upstream and
             through the proxy, direct and proxy runs alternating. Medians of N repeats
             of requests/s and p50/p90/p99 latency.
             Targets: at c=1 the proxy adds <= 0.5 ms at p50 and <= 2 ms at p99;
             at c=32 it sustains >= 2,000 req/s.
  streaming  Per-chunk added latency: a raw asyncio upstream (bench/sse_clock.py) writes
             K events G ms apart, each stamped with CLOCK_MONOTONIC; a raw client
             stamps each arrival. Delay = arrival - sent, direct vs through a second
             proxy process, a few streams at once. Target: proxy adds <= 1 ms at p99.
  memory     Proxy RSS (/proc/<pid>/status VmRSS) before and after 100,000 non-streamed
             requests (counted by the proxy's proxy_requests_total), and sampled every
             50 ms during one 100 MB streamed answer read and discarded by the client.
             Targets: growth < 20 MB in both.

Processes: the simulator (zai_proxy.simulator) and each proxy (`python -m zai_proxy
proxy`, one process, ACCESS_LOG as --access-log says) run as child processes and are
always stopped, Ctrl-C included. The machine is shared and noisy: every figure is a
median of repeated runs, and ratios are printed next to absolutes.

    apt-get install -y wrk          # needed by the latency and memory sections
    .venv/bin/python bench/proxy_bench.py                 # full run, several minutes
    .venv/bin/python bench/proxy_bench.py --quick         # smoke run, about a minute
    .venv/bin/python bench/proxy_bench.py --only latency --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sse_clock

from zai_proxy.simulator.process import SimulatorProcess, start_simulator

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "chat_completion.lua"
SECTIONS = ("latency", "streaming", "memory")
MB = 1024 * 1024

# Targets (see the docstring).
C1_ADDED_P50_MS = 0.5
C1_ADDED_P99_MS = 2.0
C32_MIN_RPS = 2_000.0
STREAM_ADDED_P99_MS = 1.0
MEMORY_GROWTH_MB = 20.0

PROXY_COMMAND = (sys.executable, "-m", "zai_proxy", "proxy")
UNLIMITED = "1000000"  # for the limiter's rate (requests/s) and concurrency bounds
RSS_SAMPLE_S = 0.05
DISTURBED_CORES = 0.25  # other load above this (in cores) marks a run as disturbed
HEALTH_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
STREAM_BODY = json.dumps(
    {
        "model": "glm-4.6",
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "stream": True,
    }
).encode()


# --- configuration ----------------------------------------------------------------------


@dataclass
class BenchConfig:
    """What to run and for how long."""

    sections: tuple[str, ...]
    duration_s: int = 10
    warmup_s: int = 5
    repeats: int = 3
    access_log: str | None = None  # None: the proxy's default (on)
    proxy_log: str | None = None
    memory_requests: int = 100_000
    stream_bytes: int = 100 * MB
    clock_streams: int = 4
    clock_events: int = 200
    clock_gap_ms: float = 10.0
    json_path: str | None = None


def parse_args(argv: list[str] | None) -> BenchConfig:
    parser = argparse.ArgumentParser(
        description="Proxy vs direct, side by side (see the module docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: short, 1 repeat")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (10)")
    parser.add_argument("--warmup", type=int, help="seconds of wrk warm-up per target (5)")
    parser.add_argument("--repeats", type=int, help="runs per case, medians reported (3)")
    parser.add_argument("--access-log", choices=("true", "false"), help="proxy ACCESS_LOG")
    parser.add_argument("--proxy-log", help="file for the proxies' output (default: temp)")
    parser.add_argument("--memory-requests", type=int, help="requests for the RSS check")
    parser.add_argument("--stream-bytes", type=int, help="size of the streamed answer")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    config = BenchConfig(sections=sections, access_log=args.access_log, json_path=args.json)
    if args.quick:
        config.duration_s, config.warmup_s, config.repeats = 2, 1, 1
        config.memory_requests, config.clock_events = 20_000, 50
    for name, value in (
        ("duration_s", args.duration),
        ("warmup_s", args.warmup),
        ("repeats", args.repeats),
        ("proxy_log", args.proxy_log),
        ("memory_requests", args.memory_requests),
        ("stream_bytes", args.stream_bytes),
    ):
        if value is not None:
            setattr(config, name, value)
    return config


# --- processes --------------------------------------------------------------------------


@dataclass
class ProxyProcess:
    """A running proxy: its base URL and process id."""

    url: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    """Wait until GET /health answers 200, or fail if the process dies or time runs out."""
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited with {process.returncode} before serving")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url}/health did not answer within {HEALTH_TIMEOUT_S} s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a bound; always reaps."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def run_proxy(
    target_url: str,
    anthropic_url: str,
    config: BenchConfig,
    log: Path,
    command: Sequence[str] = PROXY_COMMAND,
) -> Iterator[ProxyProcess]:
    """One `python -m zai_proxy proxy` process on a free port until the block ends."""
    port = free_port()
    # One process with the embedded limiter store, whatever this shell has exported.
    env = {
        k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "REDIS_URL")
    }
    env.update(
        ZAI_API_KEY="sk-bench",
        ZAI_TARGET_URL=target_url,
        ZAI_ANTHROPIC_URL=anthropic_url,
        PROXY_PORT=str(port),
        PROXY_HOST="127.0.0.1",
        PROXY_PROCESSES="1",
        # The limiter must never hold a request back here: this measures the data plane's
        # own cost (the admission call is still made on every request). The concurrency
        # cap counts leases until their batched release (every 0.2 s), so at the default
        # of 256 it refuses short requests beyond ~1,280 req/s (docs/performance.md).
        RATE_LIMIT_INITIAL=UNLIMITED,
        RATE_LIMIT_MAX=UNLIMITED,
        CONCURRENCY_LIMIT_MAX=UNLIMITED,
    )
    if config.access_log is not None:
        env["ACCESS_LOG"] = config.access_log
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(command),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    proxy = ProxyProcess(f"http://127.0.0.1:{port}", process)
    try:
        try:
            wait_healthy(proxy.url, process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; its output is in {log}") from exc
        yield proxy
    finally:
        stop_process(process)


@contextlib.contextmanager
def simulator_proxy(
    sim: SimulatorProcess,
    config: BenchConfig,
    log: Path,
    command: Sequence[str] = PROXY_COMMAND,
) -> Iterator[ProxyProcess]:
    """A proxy in front of the simulator's OpenAI and Anthropic bases."""
    base = sim.url
    with run_proxy(f"{base}/api/paas/v4", f"{base}/api/anthropic", config, log, command) as proxy:
        yield proxy


# --- measuring tools --------------------------------------------------------------------


@dataclass
class WrkResult:
    """One wrk run, as reported by chat_completion.lua's done()."""

    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int
    # CPU time per request of each watched process (utime + stime), in µs.
    cpu_us: dict[str, float] = field(default_factory=dict)
    other_cores: float = 0.0  # cores kept busy by other processes during the run


def check_wrk() -> bool:
    """Whether wrk is installed; print how to install it when not."""
    if shutil.which("wrk"):
        return True
    print(
        "wrk is not installed; the latency and memory sections drive load with it.\n"
        "  Debian/Ubuntu: sudo apt-get install -y wrk\n"
        "  macOS:         brew install wrk\n"
        "or run only the streaming section: --only streaming",
        file=sys.stderr,
    )
    return False


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc/<pid>/stat."""
    # Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_cpu_seconds() -> float:
    """CPU time of this process and its reaped children (wrk, once it has exited)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine since boot, in jiffies (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class LoadMeter:
    """CPU used over a block: by each watched process, by the bench (and wrk), by others.

    `other_cores` is what the rest of the machine kept busy meanwhile: on a shared box
    it tells a disturbed run from a clean one.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.cpu: dict[str, float] = {}
        self.other_cores = 0.0

    def __enter__(self) -> LoadMeter:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._bench = bench_cpu_seconds()
        self._jiffies = machine_jiffies()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        busy, total = (b - a for a, b in zip(self._jiffies, machine_jiffies(), strict=True))
        self.cpu = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}
        self.cpu["wrk"] = bench_cpu_seconds() - self._bench
        machine_cores = busy / max(total, 1) * (os.cpu_count() or 1)
        self.other_cores = max(0.0, machine_cores - sum(self.cpu.values()) / wall)


def run_wrk(
    url: str, connections: int, threads: int, seconds: int, pids: dict[str, int] | None = None
) -> WrkResult:
    """Run wrk with the chat-completion script; fail on any error or non-2xx answer.

    With `pids`, also report each of those processes' CPU time per request, wrk's own
    (with this process's, which only waits), and the load other processes added.
    """
    command = [
        "wrk",
        "--latency",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, seconds)}s",
        "-s",
        str(WRK_SCRIPT),
        url,
    ]
    with LoadMeter(pids or {}) as meter:
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^WRK_JSON (\{.*\})$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no WRK_JSON line in wrk's output:\n{out}")
    raw = json.loads(match[1])
    errors = sum(raw[k] for k in raw if k.endswith("_errors")) + raw["timeouts"]
    if errors:
        raise RuntimeError(f"wrk saw {errors} errors against {url}: {raw}")
    return WrkResult(
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        requests=raw["requests"],
        errors=errors,
        cpu_us={name: used / raw["requests"] * 1e6 for name, used in meter.cpu.items()},
        other_cores=meter.other_cores,
    )


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples a process's RSS every RSS_SAMPLE_S seconds in a background thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_mb(self.pid))
            self._stop.wait(RSS_SAMPLE_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(rss_mb(self.pid))

    @property
    def peak(self) -> float:
        return max(self.samples)


def requests_served(proxy: ProxyProcess) -> int:
    """The proxy's proxy_requests_total, summed over its label sets."""
    text = httpx.get(f"{proxy.url}/metrics", timeout=5).text
    values = re.findall(r"^proxy_requests_total\{.*\} (\S+)$", text, re.MULTILINE)
    return int(sum(float(v) for v in values))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


# --- targets ----------------------------------------------------------------------------


@dataclass
class Target:
    """A pass/miss check of one measured figure against its limit."""

    name: str
    measured: float
    limit: float
    unit: str
    at_least: bool = False  # True: measured must be >= limit; False: <= limit

    @property
    def passed(self) -> bool:
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    @property
    def margin(self) -> float:
        """How far inside the limit (positive) or outside it (negative)."""
        return self.measured - self.limit if self.at_least else self.limit - self.measured

    def line(self) -> str:
        verdict = "PASS" if self.passed else "MISS"
        sign = ">=" if self.at_least else "<="
        how = "margin" if self.passed else "short by"
        return (
            f"{verdict}  {self.name}: {self.measured:,.2f} {self.unit} "
            f"(target {sign} {self.limit:,.2f} {self.unit}; {how} {abs(self.margin):,.2f})"
        )


@dataclass
class Report:
    """Everything measured in this run."""

    machine: dict[str, Any]
    config: dict[str, Any]
    sections: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    # The most cores other processes kept busy during a section's runs (median per side).
    other_load: dict[str, float] = field(default_factory=dict)


# --- section: latency -------------------------------------------------------------------

CASES = (("c=1", 1, 1), ("c=32", 32, 2))  # name, connections, threads
METRICS = ("rps", "p50_ms", "p90_ms", "p99_ms", "other_cores")


def median_results(runs: list[WrkResult]) -> dict[str, float]:
    """Median of each metric (and of each watched process's CPU per request) over runs."""
    medians = {m: statistics.median(getattr(r, m) for r in runs) for m in METRICS}
    for name in runs[0].cpu_us:
        medians[f"{name}_cpu_us"] = statistics.median(r.cpu_us[name] for r in runs)
    return medians


def latency_section(
    sim: SimulatorProcess, proxy: ProxyProcess, config: BenchConfig, report: Report
) -> None:
    """wrk at c=1 and c=32, direct and proxy alternating, N repeats each."""
    print(f"\n== latency: non-streamed answers, wrk {config.duration_s} s x {config.repeats}")
    direct_url = f"{sim.url}/api/paas/v4/chat/completions"
    proxy_url = f"{proxy.url}/v1/chat/completions"
    sides = {
        "direct": (direct_url, {"sim": sim.process.pid}),
        "proxy": (proxy_url, {"sim": sim.process.pid, "proxy": proxy.pid}),
    }
    for url, _ in sides.values():
        run_wrk(url, 32, 2, config.warmup_s)
    results: dict[str, dict[str, list[WrkResult]]] = {}
    for case, connections, threads in CASES:
        runs: dict[str, list[WrkResult]] = {"direct": [], "proxy": []}
        for repeat in range(config.repeats):
            for side, (url, pids) in sides.items():
                result = run_wrk(url, connections, threads, config.duration_s, pids)
                runs[side].append(result)
                print(
                    f"  {case:<5} run {repeat + 1} {side:<6} {result.rps:8.0f} req/s  "
                    f"p50 {result.p50_ms:6.3f}  p99 {result.p99_ms:6.3f} ms  "
                    f"(other load {result.other_cores:.2f} cores)",
                    flush=True,
                )
        results[case] = runs
    medians = {
        case: {side: median_results(runs) for side, runs in sides.items()}
        for case, sides in results.items()
    }
    print_latency_table(medians, config.repeats)
    report.other_load["latency"] = max(
        side["other_cores"] for sides in medians.values() for side in sides.values()
    )
    report.sections["latency"] = {
        "medians": medians,
        "runs": {
            case: {side: [asdict(r) for r in runs] for side, runs in sides.items()}
            for case, sides in results.items()
        },
    }
    c1, c32 = medians["c=1"], medians["c=32"]
    report.targets += [
        Target(
            "c=1 added latency p50",
            (c1["proxy"]["p50_ms"] - c1["direct"]["p50_ms"]),
            C1_ADDED_P50_MS,
            "ms",
        ),
        Target(
            "c=1 added latency p99",
            (c1["proxy"]["p99_ms"] - c1["direct"]["p99_ms"]),
            C1_ADDED_P99_MS,
            "ms",
        ),
        Target("c=32 proxy throughput", c32["proxy"]["rps"], C32_MIN_RPS, "req/s", True),
    ]


def print_latency_table(medians: dict[str, dict[str, dict[str, float]]], repeats: int) -> None:
    """case | metric | direct | proxy | proxy vs direct; then CPU and load figures."""

    def row(case: str, label: str, direct: str, proxy: str, note: str = "") -> None:
        print(f"  {case:<6}{label:<20}{direct:>8}{proxy:>10}   {note}".rstrip())

    print(f"\n  medians of {repeats} run(s)")
    row("case", "metric", "direct", "proxy", "proxy vs direct")
    for case, sides in medians.items():
        d, p = sides["direct"], sides["proxy"]
        row(case, "req/s", f"{d['rps']:,.0f}", f"{p['rps']:,.0f}", f"{p['rps'] / d['rps']:.2f}x")
        for key in ("p50_ms", "p90_ms", "p99_ms"):
            note = f"+{p[key] - d[key]:.3f} ms"
            row(case, key.replace("_ms", " ms"), f"{d[key]:.3f}", f"{p[key]:.3f}", note)
        for name in ("sim", "wrk"):
            key = f"{name}_cpu_us"
            row(case, f"{name} CPU µs/req", f"{d[key]:.0f}", f"{p[key]:.0f}")
        cpu = p["proxy_cpu_us"]
        row(case, "proxy CPU µs/req", "", f"{cpu:.0f}", f"= {1e6 / cpu:,.0f} req/s per core")
        cores = f"of {os.cpu_count()}"
        row(case, "cores busy: ours", f"{cores_busy(d):.2f}", f"{cores_busy(p):.2f}", cores)
        row(case, "cores busy: others", f"{d['other_cores']:.2f}", f"{p['other_cores']:.2f}")


def cores_busy(figures: dict[str, float]) -> float:
    """Cores kept busy by wrk, the simulator and the proxy together (CPU per request x rate)."""
    cpu_us = sum(v for k, v in figures.items() if k.endswith("_cpu_us"))  # ours only
    return cpu_us * figures["rps"] / 1e6


# --- section: streaming -----------------------------------------------------------------


def delay_summary(delays_ns: list[int]) -> dict[str, float]:
    """p50, p99 and max of delivery delays, in ms."""
    ms = [d / 1e6 for d in delays_ns]
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms)}


def streaming_section(config: BenchConfig, log: Path, report: Report) -> None:
    """Per-event delivery delay, direct vs through a proxy, N alternating repeats."""
    c = config
    print(
        f"\n== streaming: {c.clock_streams} streams x {c.clock_events} events, "
        f"{c.clock_gap_ms:g} ms apart, x {c.repeats}"
    )
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
    with (
        sse_clock.clock_upstream() as upstream,
        run_proxy(upstream.url, upstream.url, config, log) as proxy,
    ):
        targets = {
            "direct": (upstream.url, "/chat/completions"),
            "proxy": (proxy.url, "/v1/chat/completions"),
        }
        pids = {"upstream": upstream.pid, "proxy": proxy.pid}
        for url, path in targets.values():  # warm-up: connections, first-use imports
            sse_clock.measure_delays(url, path, c.clock_streams, 10, c.clock_gap_ms)
        for repeat in range(c.repeats):
            for side, (url, path) in targets.items():
                with LoadMeter(pids) as meter:
                    delays = sse_clock.measure_delays(
                        url, path, c.clock_streams, c.clock_events, c.clock_gap_ms
                    )
                summary = {**delay_summary(delays), "other_cores": meter.other_cores}
                runs[side].append(summary)
                print(
                    f"  run {repeat + 1} {side:<6} p50 {summary['p50_ms']:.3f}  "
                    f"p99 {summary['p99_ms']:.3f}  max {summary['max_ms']:.3f} ms  "
                    f"(other load {meter.other_cores:.2f} cores)",
                    flush=True,
                )
    medians = {
        side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in runs.items()
    }
    d, p = medians["direct"], medians["proxy"]
    print(f"\n  medians of {c.repeats} run(s), delivery delay per event")
    print(f"  {'metric':<8}{'direct':>10}{'proxy':>10}   added")
    for key in ("p50_ms", "p99_ms", "max_ms"):
        print(f"  {key:<8}{d[key]:>10.3f}{p[key]:>10.3f}   +{p[key] - d[key]:.3f} ms")
    print(f"  others kept {d['other_cores']:.2f} / {p['other_cores']:.2f} cores busy")
    report.sections["streaming"] = {"medians": medians, "runs": runs}
    report.other_load["streaming"] = max(d["other_cores"], p["other_cores"])
    report.targets.append(
        Target("stream added delay p99", p["p99_ms"] - d["p99_ms"], STREAM_ADDED_P99_MS, "ms")
    )


# --- section: memory --------------------------------------------------------------------


def drive_requests(proxy: ProxyProcess, url: str, count: int) -> int:
    """Run wrk (c=32) in rounds until the proxy has served `count` more requests.

    Each round aims at 90% of what is left at the last round's rate, and lasts 10 s at
    most (the rate drifts on a shared machine), so the count is passed by little.
    """
    start = requests_served(proxy)
    seconds = 2
    while (done := requests_served(proxy) - start) < count:
        rate = run_wrk(url, 32, 2, seconds).rps
        seconds = min(10, max(1, int(0.9 * (count - done - rate * seconds) / rate)))
    return requests_served(proxy) - start


def memory_requests_check(
    sim: SimulatorProcess, proxy: ProxyProcess, config: BenchConfig
) -> dict[str, float]:
    """RSS after a warm-up and after `memory_requests` more requests, peak in between."""
    url = f"{proxy.url}/v1/chat/completions"
    idle = rss_mb(proxy.pid)
    run_wrk(url, 32, 2, config.warmup_s)
    baseline = rss_mb(proxy.pid)
    start = time.perf_counter()
    with (
        RssSampler(proxy.pid) as sampler,
        LoadMeter({"proxy": proxy.pid, "sim": sim.process.pid}) as meter,
    ):
        served = drive_requests(proxy, url, config.memory_requests)
    after = rss_mb(proxy.pid)
    return {
        "requests": served,
        "seconds": time.perf_counter() - start,
        "idle_mb": idle,
        "baseline_mb": baseline,
        "peak_mb": sampler.peak,
        "after_mb": after,
        "growth_mb": after - baseline,
        "other_cores": meter.other_cores,
    }


def read_stream(url: str, size: int) -> int:
    """POST for a `size`-byte stream and read it to the end, discarding; bytes read."""
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Bearer sk-client",
        "x-sim-stream-bytes": str(size),
    }
    received = 0
    with httpx.stream("POST", url, content=STREAM_BODY, headers=headers, timeout=120) as response:
        response.raise_for_status()
        for piece in response.iter_raw(1 << 16):
            received += len(piece)
    return received


def memory_stream_check(proxy: ProxyProcess, config: BenchConfig) -> dict[str, float]:
    """RSS sampled every 50 ms while one large streamed answer passes through."""
    url = f"{proxy.url}/v1/chat/completions"
    read_stream(url, 1 * MB)  # first-use allocations out of the way
    baseline = rss_mb(proxy.pid)
    start = time.perf_counter()
    with RssSampler(proxy.pid) as sampler:
        received = read_stream(url, config.stream_bytes)
    seconds = time.perf_counter() - start
    return {
        "bytes": received,
        "seconds": seconds,
        "mb_per_s": received / MB / seconds,
        "baseline_mb": baseline,
        "peak_mb": sampler.peak,
        "after_mb": sampler.samples[-1],
        "growth_mb": sampler.peak - baseline,
        "samples": len(sampler.samples),
    }


def memory_section(
    sim: SimulatorProcess, proxy: ProxyProcess, config: BenchConfig, report: Report
) -> None:
    """Both RSS checks on one proxy, and their targets."""
    print(f"\n== memory: RSS over {config.memory_requests:,} requests, then one stream")
    many = memory_requests_check(sim, proxy, config)
    print(
        f"  {many['requests']:,} requests in {many['seconds']:.0f} s: RSS idle "
        f"{many['idle_mb']:.1f} MB, after warm-up {many['baseline_mb']:.1f}, peak "
        f"{many['peak_mb']:.1f}, after {many['after_mb']:.1f}, growth "
        f"{many['growth_mb']:+.1f} MB (other load {many['other_cores']:.2f} cores)"
    )
    stream = memory_stream_check(proxy, config)
    print(
        f"  {stream['bytes'] / MB:.0f} MB stream in {stream['seconds']:.1f} s "
        f"({stream['mb_per_s']:.0f} MB/s): RSS baseline {stream['baseline_mb']:.1f} MB, "
        f"peak {stream['peak_mb']:.1f}, end {stream['after_mb']:.1f}, growth "
        f"{stream['growth_mb']:+.1f} MB ({stream['samples']} samples)"
    )
    report.sections["memory"] = {"requests": many, "stream": stream}
    report.other_load["memory"] = many["other_cores"]
    report.targets += [
        Target(
            f"RSS growth over {many['requests']:,} requests",
            many["growth_mb"],
            MEMORY_GROWTH_MB,
            "MB",
        ),
        Target(
            f"RSS growth during a {stream['bytes'] / MB:.0f} MB stream",
            stream["growth_mb"],
            MEMORY_GROWTH_MB,
            "MB",
        ),
    ]


# --- the run ----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    memtotal = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model[1] if model else "unknown",
        "memory_gb": round(int(memtotal[1]) / MB, 1) if memtotal else None,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def print_targets(report: Report) -> None:
    """PASS/MISS per target, and a warning when other processes disturbed the runs."""
    print("\n== targets")
    for target in report.targets:
        print("  " + target.line())
    disturbed = {k: v for k, v in report.other_load.items() if v > DISTURBED_CORES}
    if disturbed:
        loads = ", ".join(f"{k} {v:.2f}" for k, v in disturbed.items())
        print(f"\n  WARNING: other processes kept cores busy during the runs ({loads});")
        print("  the figures are disturbed: rerun on a quiet machine.")


def run_sections(config: BenchConfig, report: Report, log: Path) -> None:
    """Start the simulator (and a proxy in front of it when needed), run each section."""
    needs_sim = {"latency", "memory"} & set(config.sections)
    with contextlib.ExitStack() as stack:
        if needs_sim:
            sim = stack.enter_context(start_simulator())
            proxy = stack.enter_context(simulator_proxy(sim, config, log))
            print(f"simulator {sim.url}, proxy {proxy.url} (pid {proxy.pid})")
        if "latency" in config.sections:
            latency_section(sim, proxy, config, report)
        if "streaming" in config.sections:
            streaming_section(config, log, report)
        if "memory" in config.sections:
            memory_section(sim, proxy, config, report)


def write_json(report: Report, path: str) -> None:
    """Every figure, the targets with their verdicts and margins, as JSON."""
    targets = [{**asdict(t), "passed": t.passed, "margin": t.margin} for t in report.targets]
    Path(path).write_text(json.dumps({**asdict(report), "targets": targets}, indent=2))
    print(f"\nwrote {path}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: every child is stopped


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    config = parse_args(argv)
    if {"latency", "memory"} & set(config.sections) and not check_wrk():
        return 2
    report = Report(machine_info(), asdict(config))
    print("machine:", json.dumps(report.machine))
    log = Path(config.proxy_log or tempfile.mkstemp(prefix="proxy-bench-", suffix=".log")[1])
    print(f"proxy output: {log}")
    try:
        run_sections(config, report, log)
    except KeyboardInterrupt:
        print(f"\ninterrupted; processes stopped (proxy output: {log})", file=sys.stderr)
        return 130
    print_targets(report)
    if config.json_path:
        write_json(report, config.json_path)
    if config.proxy_log is None:
        log.unlink()  # kept only when the run failed, for its error
    return 0


if __name__ == "__main__":
    sys.exit(main())
