"""The processes of one run: a private Redis, the simulator, the limiter, N proxy replicas.

Each is a child process on a free 127.0.0.1 port, its output appended to one log file, and
each is stopped (SIGTERM, then SIGKILL after a bound) when its context ends, Ctrl-C
included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from zai_proxy.simulator.process import SimulatorProcess, start_simulator

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# Pool name shared by the proxies and the limiter (otherwise derived from the key).
POOL = "sim"


@dataclass(frozen=True)
class Service:
    """A running child process and the base URL it serves."""

    name: str
    url: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a bound; always reaps."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_http(url: str, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before serving")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{name}: {url} did not answer within {START_TIMEOUT_S} s")


@contextlib.contextmanager
def service(
    name: str, command: list[str], env: Mapping[str, str], port: int, health: str, log: Path
) -> Iterator[Service]:
    """Start ``command`` with ``env`` added, wait until ``health`` answers 200, stop at exit."""
    full_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    full_env.update(env)
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + health, process, name)
        yield Service(name, url, process)
    finally:
        stop(process)


@contextlib.contextmanager
def private_redis(log: Path) -> Iterator[str]:
    """A throw-away redis-server (no persistence) on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no"]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


def limiter_env(redis_url: str, prefix: str, extra: Mapping[str, str]) -> dict[str, str]:
    """What the limiter and the proxies share: the store, the pool, the tuning."""
    return {
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": prefix,
        "RATE_LIMIT_POOL": POOL,
        "LOG_LEVEL": "INFO",
        **extra,
    }


@contextlib.contextmanager
def limiter(shared: Mapping[str, str], log: Path) -> Iterator[Service]:
    """One ``zai-proxy limiter`` process."""
    port = free_port()
    command = [sys.executable, "-m", "zai_proxy", "limiter", "--host", "127.0.0.1"]
    with service("limiter", [*command, "--port", str(port)], shared, port, "/ready", log) as svc:
        yield svc


@contextlib.contextmanager
def proxies(
    count: int, upstream: str, shared: Mapping[str, str], extra: Mapping[str, str], log: Path
) -> Iterator[list[Service]]:
    """``count`` proxy replicas in front of ``upstream`` (the simulator's base URL)."""
    with contextlib.ExitStack() as stack:
        replicas = []
        for index in range(count):
            port = free_port()
            env = {
                **shared,
                "ZAI_API_KEY": "sk-sim",
                "ZAI_TARGET_URL": f"{upstream}/api/paas/v4",
                "ZAI_ANTHROPIC_URL": f"{upstream}/api/anthropic",
                "ACCESS_LOG": "false",
                "PROXY_PROCESSES": "1",
                **extra,
            }
            command = [sys.executable, "-m", "zai_proxy", "proxy", "--host", "127.0.0.1"]
            replicas.append(
                stack.enter_context(
                    service(f"proxy-{index}", [*command, "--port", str(port)], env, port,
                            "/health", log)
                )
            )  # fmt: skip
        yield replicas


@contextlib.contextmanager
def simulator(
    port: int, limit_args: list[str], log_level: str = "warning"
) -> Iterator[SimulatorProcess]:
    """The simulated upstream on ``port`` with the hidden limit ``limit_args`` describe
    (``--schedule`` or ``--concurrency-schedule``, ``--limit-kind`` and its options).

    Its schedule counts from its own start, so it is started last, right before the load.
    """
    # start_simulator passes --port 0 first; argparse takes the last value given.
    sim = start_simulator("--port", str(port), *limit_args, "--log-level", log_level)
    try:
        yield sim
    finally:
        sim.stop()
