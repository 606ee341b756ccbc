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
# A leaver's stream would last 30 s; it leaves after a few events (~600 bytes), well within
# it even when a busy machine delays its reads by seconds.
LEAVER_EVENTS = 300
LEAVE_AFTER = 600
MB = 1024 * 1024
# What resident memory may stay above the baseline once a crowd has gone, of the ~370 MB
# it took: Python's object arenas that are not entirely empty cannot be given back, and
# the idle keep-alive pool to the upstream holds a thousand connections (measured: +60 MB).
SETTLED_RSS_SLACK = 80 * MB
LISTEN = 0x0A  # the TCP state of a listening socket in /proc/net/tcp


# Every client holds a worker for its whole stream; none may be refused or queued.
ENV = {
    "MAX_WORKERS": str(CLIENTS + 100),
    "CONCURRENCY_LIMIT_MAX": str(2 * CLIENTS),
    "RATE_LIMIT_INITIAL": "10000",
    "RATE_LIMIT_MAX": "10000",
    "RATE_LIMIT_BURST": "1",
    "ACCESS_LOG": "false",
}


@pytest.fixture
def proxy(simulator: SimulatorProcess) -> Iterator[ServiceProcess]:
    """A fresh proxy: memory figures must not start from another test's high-water mark."""
    with start_proxy(simulator.url, env=ENV) as service:
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
            script = b"x-sim-chunks: %d\r\nx-sim-chunk-gap-ms: 100\r\n" % LEAVER_EVENTS
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
                if kind != "reader" and outcome.received > LEAVE_AFTER:
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


@dataclass
class Pass:
    """One crowd through the proxy, and the proxy's state around it."""

    took: float
    peak_rss: int
    peak_fds: int
    rss: int  # once everything settled
    fds: int
    pooled: int  # of fds: idle keep-alive connections to the upstream


def crowd_pass(proxy: ServiceProcess, simulator: SimulatorProcess, start: Baseline) -> Pass:
    """Run a crowd; check what each client saw and that the proxy settles after it."""
    pid = proxy.process.pid
    before = scrape(proxy.url)
    with Sampler(pid) as sampler:
        crowd, took = run_crowd(proxy)

    outcomes = crowd.outcomes
    errors = [o for o in outcomes if o.error]
    assert not errors, errors[:5]
    assert {o.status for o in outcomes} == {200}
    readers = [o for o in outcomes if o.kind == "reader"]
    assert all(o.ended and o.received > STREAM_BYTES for o in readers)
    leavers = [o for o in outcomes if o.kind != "reader"]
    assert not any(o.ended for o in leavers)

    # Every client that left freed its worker and its upstream request.
    wait_until(lambda: scrape(proxy.url).value("proxy_in_flight_requests") == 0, 15)
    wait_until(lambda: sim_stats(simulator.url)["in_flight"] == 0, 15)
    wait_until(lambda: client_connections(proxy) == 0, 15)

    def recorded() -> bool:
        # A request is recorded once its tokens are counted (estimated for a cut stream).
        after = scrape(proxy.url)
        return all(
            after.value("proxy_requests_total", status=status)
            - before.value("proxy_requests_total", status=status)
            == count
            for status, count in (("499", len(leavers)), ("200", len(readers)))
        )

    wait_until(recorded, 15)
    # Once idle, the proxy gives the burst's heap back (services/proxy/memory.py).
    wait_until(lambda: rss_bytes(pid) < start.rss + SETTLED_RSS_SLACK, 20, interval=0.5)
    return Pass(
        took,
        max(sampler.rss),
        max(sampler.fds),
        rss_bytes(pid),
        open_fds(pid),
        upstream_connections(proxy, simulator),
    )


def test_thousands_of_slow_readers_and_leavers_leave_nothing_behind(
    proxy: ServiceProcess, simulator: SimulatorProcess
) -> None:
    start = Baseline.of(proxy)
    first = crowd_pass(proxy, simulator, start)
    # Memory comes back to the baseline after each crowd (crowd_pass waits for it); the
    # keep-alive pool to the upstream fills, then closes after 30 s idle. A second crowd
    # must add nothing that stays.
    second = crowd_pass(proxy, simulator, start)
    print(
        f"{CLIENTS} clients: {first.took:.1f} s, then {second.took:.1f} s; proxy RSS "
        f"{start.rss / MB:.0f} MB -> peak {first.peak_rss / MB:.0f} -> {first.rss / MB:.0f} "
        f"-> peak {second.peak_rss / MB:.0f} -> {second.rss / MB:.0f}; fds {start.fds} -> "
        f"peak {first.peak_fds} -> {first.fds} ({first.pooled} pooled upstream) -> peak "
        f"{second.peak_fds} -> {second.fds} ({second.pooled} pooled)"
    )
    for run in (first, second):
        assert run.peak_fds >= start.fds + CLIENTS  # they really were all open at once
        # What is left beyond the start is the idle keep-alive pool to the upstream, at
        # most one connection per stream that ended normally (the others were closed).
        assert run.fds - run.pooled <= start.fds + 2
        assert run.pooled <= CLIENTS // 2 + 2
        # Backpressure bounds what a stream holds in the proxy (aiohttp's read buffer and
        # the transport's write buffer, about 200 KB), whatever the client's pace.
        assert run.peak_rss - start.rss < CLIENTS * 256 * 1024
    # No growth from one crowd to the next: 4 KB left behind per request would show.
    assert second.peak_rss - first.peak_rss < 8 * MB
    assert second.rss - first.rss < 8 * MB


def test_a_reader_that_stops_reading_holds_the_upstream_back_instead_of_filling_memory(
    proxy: ServiceProcess, simulator: SimulatorProcess
) -> None:
    clients, stream = 100, 64 * MB
    body = b'{"model":"glm-4.6","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        b"x-sim-stream-bytes: %d\r\nContent-Length: %d\r\n\r\n%s" % (stream, len(body), body)
    )
    pid = proxy.process.pid
    start = Baseline.of(proxy)
    before = scrape(proxy.url).value("proxy_requests_total", status="499")
    socks = []
    try:
        for _ in range(clients):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.connect(("127.0.0.1", port_of(proxy.url)))
            sock.sendall(request)
            socks.append(sock)
        for sock in socks:
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
        # Nobody reads for three seconds: 6.4 GB would be waiting if the proxy buffered.
        with Sampler(pid, interval=0.1) as sampler:
            time.sleep(3.0)
        assert sim_stats(simulator.url)["in_flight"] == clients
    finally:
        for sock in socks:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            sock.close()  # a reset: the client is gone
    wait_until(lambda: scrape(proxy.url).value("proxy_in_flight_requests") == 0, 15)
    wait_until(lambda: sim_stats(simulator.url)["in_flight"] == 0, 15)
    wait_until(lambda: client_connections(proxy) == 0, 15)
    # Each is recorded once its tokens are estimated (the stream was cut before its usage).
    wait_until(
        lambda: scrape(proxy.url).value("proxy_requests_total", status="499") - before == clients,
        15,
    )
    growth = [rss - start.rss for rss in sampler.rss]
    print(
        f"{clients} stalled readers of {stream // MB} MB streams: proxy RSS "
        f"+{growth[0] / MB:.0f} MB after 0.1 s, +{max(growth) / MB:.0f} MB at most in 3 s"
    )
    # Backpressure: while nobody reads, the proxy reads nothing more from the upstream, so
    # its memory stays flat. What a stalled stream holds is bounded by the buffers on the
    # way: uvloop reads up to 256 KB at once, aiohttp keeps up to two reads, the client's
    # transport one write; about 0.9 MB a stream was measured. MAX_WORKERS bounds how many
    # such streams a replica has.
    assert max(growth) < clients * 1536 * 1024
    assert max(growth[-10:]) - max(growth[:10]) < 4 * MB
