"""Starting real service processes on loopback for the tests."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

TEST_KEY = "sk-upstream-secret-0123456789abcdef"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def interrupt(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a command as Ctrl-C does, if it still runs; kill it after ``timeout``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_http(url: str, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    """Wait until a URL answers (any status), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before serving {url}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@dataclass
class ServiceProcess:
    """A service started as a subprocess, with its log captured to a file."""

    process: subprocess.Popen
    url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch_proxy(
    upstream: str,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    port: int | None = None,
) -> ServiceProcess:
    """Start `zai-proxy proxy` against an upstream base URL (on ``port``, else a free one)
    and wait until it serves; the caller stops it."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "ZAI_API_KEY": TEST_KEY,
        "ZAI_TARGET_URL": f"{upstream}/api/paas/v4",
        "ZAI_ANTHROPIC_URL": f"{upstream}/api/anthropic",
        "PROXY_PORT": str(port),
        "PROXY_HOST": "127.0.0.1",
        "LOG_LEVEL": "INFO",
        # Tests of the data plane must not queue behind the limiter's cautious start.
        "RATE_LIMIT_INITIAL": "1000",
        "RATE_LIMIT_MAX": "10000",
        **(env or {}),
    }
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    handle, name = tempfile.mkstemp(prefix="zai-proxy-", suffix=".log")
    log_path = Path(name)
    with os.fdopen(handle, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "zai_proxy", "proxy", *args],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = ServiceProcess(process, f"http://127.0.0.1:{port}", log_path, full_env)
    try:
        wait_http(f"{service.url}/health", process=process)
    except BaseException:
        service.stop()
        raise
    return service


@contextlib.contextmanager
def start_proxy(
    upstream: str,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[ServiceProcess]:
    """Run `zai-proxy proxy` against an upstream base URL until the block ends."""
    service = launch_proxy(upstream, env, args)
    try:
        yield service
    finally:
        service.stop()


# The environment a test's `up` must not inherit from the developer's shell.
STACK_ENV_PREFIXES = ("ZAI_", "REDIS_", "DATABASE_", "COLLECTOR_", "LIMITER_", "DASHBOARD_")


def launch_stack(
    upstream: str, env: Mapping[str, str] | None = None, command: str = "up"
) -> ServiceProcess:
    """Start `zai-proxy up` (every part on free loopback ports, a SQLite file of its own)
    against an upstream base URL, wait until its collector has made its first round, and
    return it as a ServiceProcess whose url is its proxy's; the caller stops it."""
    port = free_port()
    database = Path(tempfile.mkdtemp(prefix="zai-stack-")) / "zai.db"
    collector_port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(STACK_ENV_PREFIXES)},
        "ZAI_API_KEY": TEST_KEY,
        "ZAI_TARGET_URL": f"{upstream}/api/paas/v4",
        "ZAI_ANTHROPIC_URL": f"{upstream}/api/anthropic",
        "UP_HOST": "127.0.0.1",
        "PROXY_PORT": str(port),
        "LIMITER_PORT": str(free_port()),
        "COLLECTOR_PORT": str(collector_port),
        "DASHBOARD_PORT": str(free_port()),
        "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "LOG_LEVEL": "INFO",
        "RATE_LIMIT_INITIAL": "1000",
        "RATE_LIMIT_MAX": "10000",
        **(env or {}),
    }
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    handle, name = tempfile.mkstemp(prefix=f"zai-{command}-", suffix=".log")
    with os.fdopen(handle, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "zai_proxy", command],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = ServiceProcess(process, f"http://127.0.0.1:{port}", Path(name), full_env)
    try:
        wait_http(f"{service.url}/health", timeout=40, process=process)
        collector = f"http://127.0.0.1:{collector_port}/ready"
        wait_until(lambda: httpx.get(collector, timeout=2).status_code == 200, timeout=30)
    except BaseException:
        service.stop()
        raise
    return service


@contextlib.contextmanager
def start_served(
    command: str, upstream: str, env: Mapping[str, str] | None = None
) -> Iterator[ServiceProcess]:
    """The proxy as `command` serves it (`proxy`, or the proxy part of `up`), until the
    block ends: tests of what every way of serving it must do run against each."""
    if command == "proxy":
        service = launch_proxy(upstream, env)
    else:
        service = launch_stack(upstream, env, command)
    try:
        yield service
    finally:
        service.stop()


class Scrape:
    """One /metrics exposition, parsed with prometheus_client's parser."""

    def __init__(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of a name whose labels include the given ones."""
        return sum(
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def series(self, name: str) -> list[dict[str, str]]:
        """Label sets of every sample of a name."""
        return [labels for sample_name, labels, _ in self.samples if sample_name == name]


def scrape(base_url: str) -> Scrape:
    """Fetch and parse a service's /metrics."""
    response = httpx.get(f"{base_url}/metrics", timeout=5)
    response.raise_for_status()
    return Scrape(response.text)


@contextlib.contextmanager
def start_limiter(env: Mapping[str, str] | None = None) -> Iterator[ServiceProcess]:
    """Run `zai-proxy limiter` on a free loopback port until the block ends.

    The upstream key is the proxies' (TEST_KEY), so both derive the same pool name.
    """
    port = free_port()
    full_env = {
        **os.environ,
        "ZAI_API_KEY": TEST_KEY,
        "LIMITER_PORT": str(port),
        "LOG_LEVEL": "INFO",
        **(env or {}),
    }
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - outlives this frame
        prefix="zai-limiter-", suffix=".log", delete=False
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "zai_proxy", "limiter", "--host", "127.0.0.1", "--port", str(port)],
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    service = ServiceProcess(process, f"http://127.0.0.1:{port}", Path(log_file.name), full_env)
    try:
        wait_http(f"{service.url}/health", process=process)
        yield service
    finally:
        service.stop()
        log_file.close()


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> float:
    """Seconds until condition() is true; AssertionError after ``timeout`` seconds."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


class RedisServer:
    """A private `redis-server` on loopback, for tests that stop and restart Redis.

    No persistence: a restarted server starts empty, as a cache-only Redis would.
    """

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        import redis

        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--enable-debug-command", "local",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}")
                try:
                    client.ping()
                    return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server by its pid (SIGKILL by default: a crash, not a shutdown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextlib.contextmanager
def own_prefix(redis_url: str, tag: str = "test") -> Iterator[str]:
    """A Redis key prefix nobody else uses; its keys are deleted afterwards."""
    import redis

    name = f"{tag}{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        client = redis.Redis.from_url(redis_url)
        try:
            found = list(client.scan_iter(match=f"{name}:*", count=1000))
            if found:
                client.delete(*found)
        finally:
            client.close()


@dataclass(frozen=True, slots=True)
class Answer:
    """One request of a steady load: to which target, when it was sent and answered, how."""

    target: int
    sent: float
    answered: float
    status: int  # 0: no answer within the timeout, or a broken connection


class SteadyLoad:
    """Closed-loop clients posting a chat completion to every target, from a background
    thread, until stopped. A client whose request fails waits 50 ms before the next one
    (a dead target refuses at once: no spinning)."""

    def __init__(
        self,
        urls: list[str],
        clients: int,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.urls = [f"{url}/v1/chat/completions" for url in urls]
        self.clients = clients
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 20)
        assert not self._thread.is_alive(), "the load did not stop"

    def answered(self, target: int, start: float = 0.0, end: float = math.inf) -> list[Answer]:
        """The answers from one target that arrived between two times."""
        return [a for a in self.answers if a.target == target and start <= a.answered < end]

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=len(self.urls) * self.clients + 4)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as http:
            await asyncio.gather(
                *(
                    self._client(http, target)
                    for target in range(len(self.urls))
                    for _ in range(self.clients)
                )
            )

    async def _client(self, http: httpx.AsyncClient, target: int) -> None:
        chat = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                answer = await http.post(self.urls[target], json=chat, headers=self.headers)
                status = answer.status_code
            except httpx.HTTPError:
                status = 0
            self.answers.append(Answer(target, sent, time.monotonic(), status))
            if status != 200:
                await asyncio.sleep(0.05)
