"""Hostile clients at scale: thousands of concurrent slow readers, some of which leave in
the middle of their stream. The proxy applies backpressure instead of buffering, frees
every worker, upstream request and connection of a client that left, and its memory and
descriptors come back to where they were.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.reliability.probes import (
    Baseline,
    open_fds,
    port_of,
    rss_bytes,
    sim_stats,
    tcp_sockets,
)
from tests.support import ServiceProcess, scrape, start_proxy, wait_until
from zai_proxy.simulator.process import SimulatorProcess

CLIENTS = 2000
STREAM_BYTES = 256 * 1024
READ_SIZE = 4096
READ_GAP = 0.02  # a slow reader: at most 200 KB/s, far below what the upstream sends
RECEIVE_BUFFER = 8192  # no window for the kernel to absorb the stream in
MB = 1024 * 1024
LISTEN = 0x0A  # the TCP state of a listening socket in /proc/net/tcp


@pytest.fixture(scope="module")
def proxy(simulator: SimulatorProcess) -> Iterator[ServiceProcess]:
    env = {
        # Every client holds a worker for its whole stream; none may be refused or queued.
        "MAX_WORKERS": str(CLIENTS + 100),
        "CONCURRENCY_LIMIT_MAX": str(2 * CLIENTS),
        "RATE_LIMIT_INITIAL": "10000",
        "RATE_LIMIT_MAX": "10000",
        "RATE_LIMIT_BURST": "1",
        "ACCESS_LOG": "false",
    }
    with start_proxy(simulator.url, env=env) as service:
        yield service


@dataclass
class Outcome:
    """What one raw client saw."""

    kind: str  # "reader", "abort" (RST mid-stream) or "close" (FIN mid-stream)
    status: int = 0
    received: int = 0
    ended: bool = False  # the chunked body's last chunk arrived
    error: str = ""


@dataclass
class Crowd:
    """``CLIENTS`` raw-socket clients. Half read a 256 KB stream slowly through a small
    receive buffer, so the proxy must hold back rather than buffer; a quarter reset the
    connection and a quarter close it after the third event of a stream that would last
    four seconds, so they leave while the proxy is still streaming."""

    port: int
    outcomes: list[Outcome] = field(default_factory=list)

    async def client(self, index: int, body: bytes) -> Outcome:
        kind = ("abort", "close", "reader", "reader")[index % 4]
        outcome = Outcome(kind)
        if kind == "reader":
            script = b"x-sim-stream-bytes: %d\r\n" % STREAM_BYTES
        else:
            script = b"x-sim-chunks: 40\r\nx-sim-chunk-gap-ms: 100\r\n"
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=READ_SIZE)
        except OSError as exc:
            sock.close()
            outcome.error = f"connect: {exc}"
            return outcome
        try:
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
                b"Content-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
                % (script, len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            outcome.status = int(head.split(b" ", 2)[1])
            tail = b""
            while True:
                chunk = await reader.read(READ_SIZE)
                if not chunk:
                    break
                outcome.received += len(chunk)
                tail = (tail + chunk)[-64:]
                if tail.endswith(b"0\r\n\r\n"):
                    outcome.ended = True
                    break
                if kind != "reader" and tail.count(b"data:") and outcome.received > 600:
                    break  # a few events in: leave mid-stream
                await asyncio.sleep(READ_GAP)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            outcome.error = repr(exc)
        finally:
            if kind == "abort":
                writer.transport.abort()
            else:
                writer.close()
        return outcome

    async def run(self) -> None:
        body = b'{"model":"glm-4.6","stream":true,"messages":[{"role":"user","content":"hi"}]}'
        self.outcomes = await asyncio.gather(*(self.client(i, body) for i in range(CLIENTS)))


class Sampler:
    """Samples a process's resident memory and descriptors in the background."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.rss: list[int] = []
        self.fds: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.rss.append(rss_bytes(self.pid))
            self.fds.append(open_fds(self.pid))
            self._stop.wait(self.interval)


def client_connections(proxy: ServiceProcess) -> int:
    """The proxy's sockets on its own port, the listener aside: connections from clients."""
    port = port_of(proxy.url)
    return sum(
        1 for local, _, state in tcp_sockets(proxy.process.pid) if local == port and state != LISTEN
    )


def upstream_connections(proxy: ServiceProcess, simulator: SimulatorProcess) -> int:
    """The proxy's sockets to the upstream: in use or idle in the keep-alive pool."""
    port = port_of(simulator.url)
    return sum(1 for _, remote, _ in tcp_sockets(proxy.process.pid) if remote == port)


def run_crowd(proxy: ServiceProcess) -> tuple[Crowd, float]:
    crowd = Crowd(port_of(proxy.url))
    started = time.monotonic()
    asyncio.run(crowd.run())
    return crowd, time.monotonic() - started


def test_thousands_of_slow_readers_and_leavers_leave_nothing_behind(
    proxy: ServiceProcess, simulator: SimulatorProcess
) -> None:
    pid = proxy.process.pid
    # A warm-up crowd sets the high-water marks (pools, buffers, the allocator's arenas);
    # the measured crowd must then add nothing that stays.
    warm_up, _ = run_crowd(proxy)
    wait_until(lambda: scrape(proxy.url).value("proxy_in_flight_requests") == 0, 30)
    wait_until(lambda: client_connections(proxy) == 0, 30)
    baseline = Baseline.of(proxy)
    pooled_before = upstream_connections(proxy, simulator)
    before = scrape(proxy.url)

    with Sampler(pid) as sampler:
        crowd, took = run_crowd(proxy)

    outcomes = crowd.outcomes
    errors = [o for o in outcomes if o.error]
    assert not errors, errors[:5]
    assert {o.status for o in outcomes} == {200}
    readers = [o for o in outcomes if o.kind == "reader"]
    assert all(o.ended and o.received > STREAM_BYTES for o in readers)

    # Every client that left freed its worker and its upstream request at once.
    wait_until(lambda: scrape(proxy.url).value("proxy_in_flight_requests") == 0, 15)
    wait_until(lambda: sim_stats(simulator.url)["in_flight"] == 0, 15)
    wait_until(lambda: client_connections(proxy) == 0, 15)
    after = scrape(proxy.url)
    left = after.value("proxy_requests_total", status="499") - before.value(
        "proxy_requests_total", status="499"
    )
    served = after.value("proxy_requests_total", status="200") - before.value(
        "proxy_requests_total", status="200"
    )
    print("DEBUG", left, served, [(o.kind, o.received, o.ended) for o in outcomes[:8]]); assert left == CLIENTS // 2
    assert served == CLIENTS // 2

    # Descriptors: what is left beyond the baseline is the idle keep-alive pool to the
    # upstream, which can only have grown by connections of streams that ended normally.
    pooled = upstream_connections(proxy, simulator)
    fds = open_fds(pid)
    rss = rss_bytes(pid)
    print(
        f"{CLIENTS} clients in {took:.1f} s; proxy fds {baseline.fds} -> peak "
        f"{max(sampler.fds)} -> {fds} ({pooled_before} -> {pooled} pooled upstream); RSS "
        f"{baseline.rss / MB:.0f} -> peak {max(sampler.rss) / MB:.0f} -> {rss / MB:.0f} MB "
        f"(warm-up errors: {sum(1 for o in warm_up.outcomes if o.error)})"
    )
    assert max(sampler.fds) >= baseline.fds + CLIENTS  # they really were all open at once
    assert fds - pooled <= baseline.fds - pooled_before + 4
    assert pooled <= CLIENTS // 2 + pooled_before
    # Memory: backpressure bounds what a stream holds (about two read buffers and the
    # transport's write buffer, ~200 KB); 2,000 of them stay well under 400 MB at the peak.
    # After the crowd the second run adds at most 16 MB over the first's high-water mark.
    assert max(sampler.rss) - baseline.rss < 400 * MB
    assert rss - baseline.rss < 16 * MB
