"""Collector soak: resident memory of `zai-proxy collector` over a long run.

The previous system's collector crash-looped on out-of-memory, so this runs the real
collector process against real proxies under light load for ``--minutes`` and prints its
resident memory (VmRSS and the peak VmHWM from /proc/<pid>/status) every minute, with
what it did meanwhile (rounds, snapshots written, buffered, dropped).

The proxies (``--proxies``, default 3: production, canary, production, ...) stand in
front of the simulated upstream; a load thread sends ``--rate`` requests/s across them
with a few models and varied latencies and token counts. Every ``--restart-every``
minutes one proxy restarts (its counters reset). With ``--outage START,LENGTH`` (minutes)
another connection holds SQLite's write lock for that long: the collector's writes fail,
the snapshots wait in its bounded buffer, and are written when the lock goes.

    .venv/bin/python bench/collector_soak.py                  # 10 minutes
    .venv/bin/python bench/collector_soak.py --minutes 5 --outage 2,2 --interval 1
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from zai_proxy.simulator.process import start_simulator

MODELS = ("glm-4.6", "glm-4.5-air", "glm-4.5")
KEY = "sk-soak-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "zai_proxy", *command],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Proxy:
    """One proxy replica on a fixed port, restartable."""

    def __init__(self, upstream: str, variant: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "ZAI_API_KEY": KEY,
            "ZAI_TARGET_URL": f"{upstream}/api/paas/v4",
            "DEPLOYMENT_VARIANT": variant,
            "ACCESS_LOG": "false",
            "RATE_LIMIT_INITIAL": "1000",
            "RATE_LIMIT_MAX": "10000",
        }
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["proxy", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = launch(command, self.env, self.log)
        wait_http(f"{self.url}/health", self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found


def collector_figures(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    wanted = {
        "collector_rounds_total": "rounds",
        "collector_snapshots_written_total": "written",
        "collector_snapshots_buffered": "buffered",
        "collector_snapshots_dropped_total": "dropped",
        "collector_targets_up": "up",
        "collector_database_up": "db_up",
    }
    figures = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and sample.labels.get("kind", "proxy") == "proxy":
                figures[wanted[sample.name]] += sample.value
    return figures


def load(proxies: list[Proxy], rate: float, stopped: threading.Event) -> None:
    """About ``rate`` requests/s across the proxies, until ``stopped``."""
    rng = random.Random(7)
    targets = itertools.cycle(proxies)
    with httpx.Client(timeout=30) as client:
        while not stopped.is_set():
            started = time.monotonic()
            target = next(targets)
            with contextlib.suppress(httpx.HTTPError):  # a proxy restarting
                client.post(
                    f"{target.url}/v1/chat/completions",
                    json={
                        "model": rng.choice(MODELS),
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                    headers={
                        "x-sim-latency-ms": str(rng.choice((20, 50, 80, 150, 400))),
                        "x-sim-prompt-tokens": str(rng.randint(50, 4000)),
                        "x-sim-completion-tokens": str(rng.randint(5, 800)),
                    },
                )
            stopped.wait(max(0.0, 1.0 / rate - (time.monotonic() - started)))


@contextlib.contextmanager
def write_lock(database: Path) -> Iterator[None]:
    """Hold SQLite's write lock: every other writer fails after its busy timeout."""
    connection = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        yield
        connection.execute("COMMIT")
    finally:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--proxies", type=int, default=3, choices=range(1, 9))
    parser.add_argument("--rate", type=float, default=5.0, help="requests/s in total")
    parser.add_argument("--interval", type=float, default=1.0, help="SCRAPE_INTERVAL")
    parser.add_argument("--restart-every", type=float, default=3.0, help="minutes; 0: never")
    parser.add_argument("--outage", help="START,LENGTH in minutes: SQLite write lock held")
    parser.add_argument("--buffer-max", type=int, help="COLLECTOR_BUFFER_MAX")
    args = parser.parse_args()
    outage = tuple(float(x) * 60 for x in args.outage.split(",")) if args.outage else None

    folder = Path(tempfile.mkdtemp(prefix="collector-soak-"))
    database = folder / "rollups.db"
    print(f"logs and database in {folder}", flush=True)
    with start_simulator() as sim:
        variants = itertools.cycle(("production", "canary"))
        proxies = [
            Proxy(sim.url, next(variants), folder / "proxies.log") for _ in range(args.proxies)
        ]
        collector_port = free_port()
        env = {
            "COLLECTOR_TARGETS": ",".join(p.url for p in proxies),
            "COLLECTOR_LIMITER_TARGETS": "",
            "SCRAPE_INTERVAL": str(args.interval),
            "DATABASE_URL": f"sqlite:///{database}",
            "LOG_LEVEL": "INFO",
        }
        if args.buffer_max:
            env["COLLECTOR_BUFFER_MAX"] = str(args.buffer_max)
        stopped = threading.Event()
        collector: subprocess.Popen[bytes] | None = None
        lock: contextlib.ExitStack | None = None
        try:
            for p in proxies:
                p.start()
            command = ["collector", "--host", "127.0.0.1", "--port", str(collector_port)]
            collector = launch(command, env, folder / "collector.log")
            url = f"http://127.0.0.1:{collector_port}"
            wait_http(f"{url}/health", collector)
            loader = threading.Thread(target=load, args=(proxies, args.rate, stopped), daemon=True)
            loader.start()
            print(
                f"collector pid {collector.pid}: {args.proxies} proxies, {args.rate:g} req/s, "
                f"every {args.interval:g} s, {args.minutes:g} min",
                flush=True,
            )
            print("minute  rss_mib  hwm_mib  rounds  written  buffered  dropped  up  db_up")
            began = time.monotonic()
            restarts = itertools.cycle(proxies)
            next_restart = args.restart_every * 60 if args.restart_every else None
            minute = 0
            while True:
                elapsed = time.monotonic() - began
                if outage and lock is None and outage[0] <= elapsed < sum(outage):
                    lock = contextlib.ExitStack()
                    lock.enter_context(write_lock(database))
                    print(
                        f"        database write lock taken at {elapsed / 60:.1f} min", flush=True
                    )
                if lock is not None and outage and elapsed >= sum(outage):
                    lock.close()
                    lock = None
                    print(
                        f"        database write lock released at {elapsed / 60:.1f} min",
                        flush=True,
                    )
                if next_restart is not None and elapsed >= next_restart:
                    victim = next(restarts)
                    victim.stop()
                    victim.start()
                    next_restart += args.restart_every * 60
                    print(f"        restarted {victim.url} at {elapsed / 60:.1f} min", flush=True)
                if elapsed >= minute * 60:
                    mem, figures = memory(collector.pid), collector_figures(url)
                    print(
                        f"{minute:6d}  {mem['VmRSS']:7.1f}  {mem['VmHWM']:7.1f}  "
                        f"{figures['rounds']:6.0f}  {figures['written']:7.0f}  "
                        f"{figures['buffered']:8.0f}  {figures['dropped']:7.0f}  "
                        f"{figures['up']:2.0f}  {figures['db_up']:5.0f}",
                        flush=True,
                    )
                    minute += 1
                    if minute > args.minutes:
                        break
                time.sleep(0.5)
        finally:
            stopped.set()
            if lock is not None:
                lock.close()
            if collector is not None:
                stop(collector)
            for p in proxies:
                p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
