"""Resident memory of a proxy under two hostile-body attacks, with its default limits.

1. One connection sends a chunked body whose trailer is one field that never ends (up to
   ``--trailer-mib``), while /health is timed every 50 ms.
2. 40 connections at once upload 31 MiB bodies (``MAX_WORKERS=2``, ``MAX_QUEUE=2``).

For each: the proxy's RSS growth at most (sampled every 50 ms), what the clients got, and
(1) the slowest /health. Run it with the interpreter of the build to measure (its
``zai_proxy`` is the one started): ``.venv/bin/python -m bench.hostile_memory``.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson

from tests.reliability.probes import RSSSampler
from tests.support import ServiceProcess, start_proxy
from zai_proxy.simulator.process import start_simulator

CHAT = orjson.dumps({"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]})


def port_of(proxy: ServiceProcess) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


def trailer_attack(proxy: ServiceProcess, limit_mib: int) -> str:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\nX-Trailer: " % (len(CHAT), CHAT)
    )
    piece = b"a" * 65536
    health: list[float] = []
    stop = threading.Event()

    def time_health() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                started = time.monotonic()
                client.get(f"{proxy.url}/health")
                health.append(time.monotonic() - started)
                stop.wait(0.05)

    sent, answer = 0, b""
    timer = threading.Thread(target=time_health, daemon=True)
    with (
        RSSSampler(proxy.process.pid) as rss,
        socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=120) as sock,
    ):
        timer.start()
        while not health:
            time.sleep(0.01)
        sock.sendall(head)
        sock.setblocking(False)
        while sent < limit_mib * 2**20:
            try:
                answer += sock.recv(65536)
                break  # answered (or closed)
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                sent += sock.send(piece)
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                break
        time.sleep(0.5)  # /health after the attack, too
        stop.set()
        timer.join()
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "none yet"
    return (
        f"trailer attack: {sent / 2**20:.1f} MiB of one trailer field sent, answer {status}; "
        f"RSS +{rss.growth / 2**20:.0f} MiB at most; /health slowest {max(health) * 1000:.0f} ms "
        f"(median {sorted(health)[len(health) // 2] * 1000:.0f} ms)"
    )


def upload(port: int, body: bytes) -> int:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(head)
        with contextlib.suppress(OSError):
            for i in range(0, len(body), 2**20):
                sock.sendall(body[i : i + 2**20])
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def upload_crowd(proxy: ServiceProcess) -> str:
    content = "a" * (31 * 2**20 - 80)
    body = orjson.dumps({"model": "glm-4.6", "messages": [{"role": "user", "content": content}]})
    with RSSSampler(proxy.process.pid) as rss, ThreadPoolExecutor(40) as pool:
        started = time.monotonic()
        statuses = Counter(pool.map(lambda _: upload(port_of(proxy), body), range(40)))
        took = time.monotonic() - started
    return (
        f"40 uploads of 31 MiB at once (MAX_WORKERS=2, MAX_QUEUE=2): {dict(statuses)} in "
        f"{took:.1f} s; RSS +{rss.growth / 2**20:.0f} MiB at most"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trailer-mib", type=int, default=121)
    args = parser.parse_args()
    with start_simulator() as simulator:
        with start_proxy(simulator.url, env={"MAX_RETRIES": "0"}) as proxy:
            print(trailer_attack(proxy, args.trailer_mib), flush=True)
        env = {"MAX_WORKERS": "2", "MAX_QUEUE": "2", "MAX_RETRIES": "0"}
        with start_proxy(simulator.url, env=env) as proxy:
            print(upload_crowd(proxy), flush=True)


if __name__ == "__main__":
    main()
