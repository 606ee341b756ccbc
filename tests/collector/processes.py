"""Real processes for the collector's tests: proxies on chosen addresses, and the collector.

Unlike ``tests.support.start_proxy`` these start several processes at once (each takes
a second or two to import) and let a proxy be stopped and started again on its address.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import TEST_KEY, Scrape, free_port, wait_http


def url_of(host: str, port: int) -> str:
    """A base URL, with an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class Process:
    """A `python -m zai_proxy <command>` process that can be stopped and started again."""

    command: tuple[str, ...]
    env: dict[str, str]
    url: str
    log_path: Path = field(default_factory=lambda: Path(tempfile.mktemp(suffix=".log")))
    process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """Start the process (without waiting for it to serve)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "zai_proxy", *self.command],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait(self, timeout: float = 30.0) -> None:
        """Wait until the process serves /health."""
        wait_http(f"{self.url}/health", timeout, process=self.process)

    def start(self) -> None:
        """Start and wait until it serves."""
        self.launch()
        self.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; reaps the process."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def proxy(
    upstream: str,
    variant: str,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Process:
    """A proxy of ``variant`` in front of ``upstream``, with its own in-process limiter."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "ZAI_API_KEY": TEST_KEY,
        "ZAI_TARGET_URL": f"{upstream}/api/paas/v4",
        "ZAI_ANTHROPIC_URL": f"{upstream}/api/anthropic",
        "DEPLOYMENT_VARIANT": variant,
        "ACCESS_LOG": "false",
        "RATE_LIMIT_INITIAL": "1000",
        "RATE_LIMIT_MAX": "10000",
        **(env or {}),
    }
    for name in ("PROMETHEUS_MULTIPROC_DIR", "REDIS_URL"):
        full_env.pop(name, None)
    command = ("proxy", "--host", host, "--port", str(port))
    return Process(command, full_env, url_of(host, port))


def limiter(env: Mapping[str, str] | None = None) -> Process:
    """A limiter on its own in-process store."""
    port = free_port()
    full_env = {**os.environ, "ZAI_API_KEY": TEST_KEY, **(env or {})}
    full_env.pop("REDIS_URL", None)
    command = ("limiter", "--host", "127.0.0.1", "--port", str(port))
    return Process(command, full_env, url_of("127.0.0.1", port))


def collector(env: Mapping[str, str]) -> Process:
    """A collector (`zai-proxy collector`) configured by ``env``."""
    port = free_port()
    full_env = {**os.environ, "LOG_LEVEL": "INFO", **env}
    command = ("collector", "--host", "127.0.0.1", "--port", str(port))
    return Process(command, full_env, url_of("127.0.0.1", port))


@contextlib.contextmanager
def running(*processes: Process) -> Iterator[None]:
    """Start the processes together, wait for each, and stop them all at the end."""
    try:
        for process in processes:
            process.launch()
        for process in processes:
            process.wait()
        yield
    finally:
        for process in processes:
            process.stop()


class CollectorClient:
    """Reads a running collector's /targets and /metrics."""

    def __init__(self, url: str) -> None:
        self.url = url

    def targets(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/targets", timeout=5).json()

    def up(self) -> set[str]:
        """URLs of the targets that answered in the last round."""
        return {t["url"] for t in self.targets()["targets"] if t["up"]}

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return Scrape(text).value(name, **labels)

    def rounds(self) -> int:
        return int(self.targets()["rounds"])

    def wait_rounds(self, count: int, timeout: float = 20.0) -> None:
        """Wait until ``count`` more rounds have completed."""
        until = self.rounds() + count
        wait_for(lambda: self.rounds() >= until, timeout)

    def wait_up(self, urls: set[str], timeout: float = 20.0) -> None:
        """Wait until exactly these targets answered in a round (each then has a baseline)."""
        wait_for(lambda: self.up() == urls, timeout)


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.1) -> None:
    """Poll until ``condition()`` is true; AssertionError naming the time after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def metrics_url(base: str) -> str:
    """The URL the collector scrapes for a service at ``base``."""
    return f"{base}/metrics"
