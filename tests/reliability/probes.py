"""What the reliability tests measure of a process, and how they talk to one at the lowest
level: resident memory and open descriptors from /proc, raw HTTP/1.1 over a socket, a
simulated upstream's counters, and a TCP server that answers whatever bytes it is told.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Self

import httpx

from tests.support import ServiceProcess, scrape, wait_until


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


class RSSSampler:
    """Samples a process's resident memory every 50 ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples = [rss_bytes(pid)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError, ValueError):  # the process may have ended
                self.samples.append(rss_bytes(self.pid))

    @property
    def growth(self) -> int:
        return max(self.samples) - self.samples[0]


def open_fds(pid: int) -> int:
    """Open file descriptors of a process (sockets included)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def tcp_sockets(pid: int) -> list[tuple[int, int, int]]:
    """(local port, remote port, state) of every TCP socket a process holds open.

    Read from /proc/net/tcp{,6}, matched by inode to the process's descriptors: this tells
    the proxy's client connections (local port: its own) from its upstream pool (remote
    port: the upstream's), which open_fds() cannot.
    """
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{name}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if fields[9] in inodes:
                    local = int(fields[1].rsplit(":", 1)[1], 16)
                    remote = int(fields[2].rsplit(":", 1)[1], 16)
                    found.append((local, remote, int(fields[3], 16)))
    return found


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port; everything read until the server closes.

    Fails (socket.timeout) if the server neither answers nor closes within ``timeout``:
    a hang is a failure, never a pass.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    return answer


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP/1.1 answer (0: no status line)."""
    if not answer.startswith(b"HTTP/1."):
        return 0
    return int(answer.split(b" ", 2)[1])


def sim_stats(simulator_url: str) -> dict:
    return dict(httpx.get(f"{simulator_url}/_sim/stats", timeout=5).json())


def attempts_seen(simulator_url: str, request_id: str) -> int:
    """How many upstream attempts carried this request id (the simulator counts them)."""
    response = httpx.get(f"{simulator_url}/_sim/requests/{request_id}", timeout=5)
    return int(response.json()["seen"]) if response.status_code == 200 else 0


@dataclass
class Baseline:
    """A proxy's open descriptors and resident memory at rest."""

    fds: int
    rss: int

    @classmethod
    def of(cls, proxy: ServiceProcess) -> Baseline:
        return cls(open_fds(proxy.process.pid), rss_bytes(proxy.process.pid))


def assert_settled(
    proxy: ServiceProcess,
    baseline: Baseline,
    *,
    simulator_url: str | None = None,
    pooled: int = 0,
    timeout: float = 15.0,
) -> None:
    """Wait until nothing is left over: no request holding a worker or queued, the
    simulator serving nothing, and open descriptors back to the baseline plus at most
    ``pooled`` idle keep-alive connections to the upstream (and a few for the scrape)."""
    pid = proxy.process.pid

    def settled() -> bool:
        metrics = scrape(proxy.url)
        if metrics.value("proxy_in_flight_requests") or metrics.value("proxy_queued_requests"):
            return False
        if simulator_url is not None and sim_stats(simulator_url)["in_flight"]:
            return False
        return open_fds(pid) <= baseline.fds + pooled + 4

    try:
        wait_until(settled, timeout, interval=0.1)
    except AssertionError:
        metrics = scrape(proxy.url)
        raise AssertionError(
            f"not settled after {timeout} s: in flight "
            f"{metrics.value('proxy_in_flight_requests')}, queued "
            f"{metrics.value('proxy_queued_requests')}, fds {open_fds(pid)} "
            f"(baseline {baseline.fds} + {pooled} pooled)"
            + (f", simulator {sim_stats(simulator_url)}" if simulator_url else "")
        ) from None


class LoopbackServer:
    """A TCP server on 127.0.0.1 that hands each accepted connection to ``_answer`` in a
    thread of its own, until the block that entered it ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(512)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        # A timeout, so that the loop sees the stop: closing a socket does not wake accept().
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        raise NotImplementedError


class ScriptedServer(LoopbackServer):
    """A TCP server on loopback that answers every connection with ``reply`` bytes.

    ``reply`` None: accept and say nothing (a stalled upstream). After the reply the
    connection is closed, unless ``hold`` is set. ``connections`` counts what was
    accepted, so a test can count upstream attempts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reply: bytes | None = b""
        self.hold = False
        self.connections = 0
        self._open: list[socket.socket] = []

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.drop_held()

    def drop_held(self) -> None:
        """Close every connection kept open (``hold`` or ``reply`` None)."""
        with self._lock:
            held, self._open = self._open, []
        for conn in held:
            with contextlib.suppress(OSError):
                conn.close()

    def _answer(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        reply, hold = self.reply, self.hold
        try:
            conn.settimeout(5)
            # Read the request head (and whatever body came with it) before answering.
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            if reply:
                conn.sendall(reply)
        except OSError:
            pass
        if reply is None or hold:
            with self._lock:
                self._open.append(conn)
            return
        time.sleep(0.05)  # let the bytes go before the FIN
        with contextlib.suppress(OSError):
            conn.close()
