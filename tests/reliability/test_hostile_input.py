"""Hostile input through a real proxy: bodies over the limit, cut short, malformed or
pathological; heads too large, too slow or absent; ambiguous framing (request smuggling)
and chunked trailers; CR/LF injection; TRACE and CONNECT; targets that try to leave the
upstream; and a grammar fuzzer of raw requests. Every case ends with the answer a gateway
should give (or a clean close, never a hang, a 5xx or a traceback), the upstream called
exactly as expected (simulator records and counters, or a recording upstream that keeps
every request it receives), nothing else ever contacted, and the proxy healthy
afterwards: a normal request gets 200, no worker or descriptor is left held, and the
upstream key is in no answer and no log line.

The lengths and silences are configured small (MAX_REQUEST_BODY_BYTES 2 MiB,
MAX_REQUEST_HEADER_BYTES 8 KiB, both client timeouts 1.5 s) so the suite runs quickly.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import re
import socket
import string
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.reliability.probes import (
    Baseline,
    LoopbackServer,
    RSSSampler,
    ScriptedServer,
    assert_settled,
    attempts_seen,
    exchange,
    port_of,
    sim_stats,
    status_of,
)
from tests.support import TEST_KEY, ServiceProcess, scrape, start_served, wait_until
from zai_proxy.proxy.protocol import REFUSAL_LINGER_SECONDS
from zai_proxy.simulator.process import SimulatorProcess

MAX_BODY = 2 * 1024 * 1024
MAX_HEAD = 8 * 1024
HEAD_TIMEOUT = 1.5
BODY_TIMEOUT = 1.5
BODY_TOTAL_TIMEOUT = 3.0
WORKERS = 8
ENV = {
    "MAX_REQUEST_BODY_BYTES": str(MAX_BODY),
    "MAX_REQUEST_HEADER_BYTES": str(MAX_HEAD),
    "CLIENT_HEADER_TIMEOUT": str(HEAD_TIMEOUT),
    "CLIENT_BODY_TIMEOUT": str(BODY_TIMEOUT),
    "CLIENT_BODY_TOTAL_TIMEOUT": str(BODY_TOTAL_TIMEOUT),
    "MAX_WORKERS": str(WORKERS),
    # One attempt per request, so upstream counts are request counts.
    "MAX_RETRIES": "0",
}
# `proxy` serves it alone; `up` (and `demo`, which is `up` with a simulated upstream) serves
# it beside the other parts, in one process: both must be the same hardened server.
SERVED_BY = ["proxy", "up"]
# A busy machine may delay any answer by seconds; a hang is anything beyond this.
HANG = 15.0
CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}
CHAT_BODY = orjson.dumps(CHAT)
STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5]\d\d [^\r\n]*\r\n")


def new_id() -> str:
    return uuid.uuid4().hex


# --- a recording upstream -------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request as it arrived upstream: its raw head, and its body."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased
    head: bytes
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


class RecordingUpstream(LoopbackServer):
    """An HTTP/1.1 upstream on loopback that keeps every request it receives, byte for
    byte, and answers each with a chat completion that reports no usage (so the proxy
    estimates tokens); one request per connection."""

    ANSWER = orjson.dumps(
        {
            "id": "chatcmpl-recorded",
            "object": "chat.completion",
            "model": "glm-4.6",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self._received: list[Received] = []
        self.host = f"127.0.0.1:{self.port}".encode()

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(HANG)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            request_line, *lines = head.split(b"\r\n")
            method, target, _ = request_line.split(b" ", 2)
            headers = []
            for line in lines:
                name, _, value = line.partition(b":")
                headers.append((name.strip().lower(), value.strip()))
            length = int(dict(headers).get(b"content-length", b"0"))
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            with self._lock:
                self._received.append(Received(method, target, headers, head, body))
            answer = b"" if method == b"HEAD" else self.ANSWER
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(self.ANSWER), answer)
            )


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=SERVED_BY)
def served_by(request: pytest.FixtureRequest) -> str:
    """The command that serves the proxy: every case runs against each."""
    return str(request.param)


@pytest.fixture(scope="module")
def proxy(simulator: SimulatorProcess, served_by: str) -> Iterator[ServiceProcess]:
    """A proxy in front of the simulator, for bodies, heads and timeouts."""
    with start_served(served_by, simulator.url, env=ENV) as service:
        yield service


@pytest.fixture(scope="module")
def baseline(proxy: ServiceProcess) -> Baseline:
    return Baseline.of(proxy)


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def evil() -> Iterator[ScriptedServer]:
    """A server no request may ever reach: hostile targets and hosts point at it."""
    with ScriptedServer() as server:
        server.reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        yield server


@pytest.fixture(scope="module")
def guarded(recorder: RecordingUpstream, served_by: str) -> Iterator[ServiceProcess]:
    """A proxy in front of the recording upstream, for framing, injection, targets, fuzz."""
    with start_served(served_by, recorder.url, env=ENV) as service:
        yield service


@pytest.fixture(scope="module")
def guarded_baseline(guarded: ServiceProcess) -> Baseline:
    return Baseline.of(guarded)


# --- helpers --------------------------------------------------------------------------------


def check_answer(answer: bytes) -> None:
    """A well-formed answer (or a clean close): status lines, no 5xx, no traceback, no key."""
    assert TEST_KEY.encode() not in answer
    assert b"Traceback" not in answer
    if answer:
        assert STATUS_LINE.match(answer), answer[:300]
    assert all(status < 500 for status in statuses_of(answer)), answer[:500]


def statuses_of(answer: bytes) -> list[int]:
    """The status codes of every answer in raw bytes, in order."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


def send(proxy: ServiceProcess, data: bytes) -> bytes:
    """Raw bytes in; everything the proxy answered until it closed (a hang fails)."""
    answer = exchange(port_of(proxy.url), data, timeout=HANG)
    check_answer(answer)
    return answer


def read_until_close(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (FIN or reset); a hang fails."""
    sock.settimeout(HANG)
    answer = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            raise AssertionError(f"no answer and no close in {HANG} s: {answer[:200]!r}") from None
        if not chunk:
            break
        answer += chunk
    check_answer(answer)
    return answer


class Sender:
    """Sends ``pieces`` on a socket from a thread, ``gap`` seconds apart, until they run
    out, the peer stops taking them, or the block ends; notes when and how it stopped."""

    def __init__(self, sock: socket.socket, pieces: Iterable[bytes], gap: float = 0.0) -> None:
        self.sock, self.pieces, self.gap = sock, pieces, gap
        self.sent = 0
        self.error = ""
        self.stopped_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(HANG)

    def _run(self) -> None:
        try:
            for piece in self.pieces:
                if self._stop.is_set():
                    break
                self.sock.sendall(piece)
                self.sent += len(piece)
                if self.gap:
                    self._stop.wait(self.gap)
        except OSError as exc:
            self.error = type(exc).__name__
        self.stopped_at = time.monotonic()

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still sending after {timeout} s"


def headers_of(answer: bytes) -> dict[str, str]:
    """The header fields of the first answer in raw bytes, names lower-cased."""
    lines = answer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}


def proxy_error_of(answer: bytes) -> str:
    """The x-proxy-error code of a raw answer ('' for none)."""
    return headers_of(answer).get("x-proxy-error", "")


def ends_with_parser_refusal(answer: bytes) -> bool:
    """Whether the last answer in raw bytes is the parser's 400, a JSON error in the
    client's format, and nothing follows it (the connection closed)."""
    head, _, body = answer.rpartition(b"\r\n\r\n")
    last = b"HTTP/1.1 " + head.rpartition(b"HTTP/1.1 ")[2] + b"\r\n\r\n"
    headers = headers_of(last)
    return (
        status_of(last) == 400
        and headers.get("x-proxy-error") == "invalid_http_request"
        and headers.get("connection") == "close"
        and headers.get("content-length") == str(len(body))
        and orjson.loads(body)["error"]["code"] == "invalid_http_request"
    )


def assert_healthy(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess | None = None
) -> None:
    """A normal request still gets 200; nothing is left held; the log holds no key and no
    traceback."""
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=HANG)
    assert response.status_code == 200, response.text
    assert_settled(
        proxy, baseline, simulator_url=simulator.url if simulator else None, pooled=WORKERS
    )
    log = proxy.log()
    assert TEST_KEY not in log
    assert "Traceback" not in log, log[max(0, log.index("Traceback") - 500) :][:3000]


def post_chat(proxy: ServiceProcess, body: bytes, headers: dict[str, str]) -> httpx.Response:
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions", content=body, headers=headers, timeout=HANG
    )
    assert TEST_KEY not in response.text and TEST_KEY not in str(response.headers)
    return response


def sim_requests(simulator: SimulatorProcess) -> int:
    """Generation requests the simulator received (chat completions and messages)."""
    return int(sim_stats(simulator.url)["requests"])


def chat_head(request_id: str, extra: bytes = b"") -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        b"X-Request-Id: %s\r\n%s" % (request_id.encode(), extra)
    )


# --- bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_gets_413_and_the_connection_closes_while_the_client_still_sends(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess, framing: str
) -> None:
    """Declared over the limit (answered before a byte of it is read) or chunked past it
    (answered once the limit is crossed): either way the proxy then closes instead of
    reading and dropping the rest for as long as the client keeps sending."""
    request_id, before = new_id(), sim_requests(simulator)
    piece = b"x" * 65536
    if framing == "content-length":
        head = chat_head(request_id, b"Content-Length: %d\r\n\r\n" % (64 * MAX_BODY))
    else:
        head = chat_head(request_id, b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (len(piece), piece)
    with socket.create_connection(("127.0.0.1", port_of(proxy.url)), timeout=HANG) as sock:
        sock.sendall(head)
        # 64 KiB every 20 ms: the declared 128 MiB would take 40 s.
        with Sender(sock, itertools.repeat(piece), gap=0.02) as sender:
            answer = read_until_close(sock)
            closed = time.monotonic()
            sender.wait(REFUSAL_LINGER_SECONDS + HANG)
    assert status_of(answer) == 413, answer[:300]
    assert proxy_error_of(answer) == "request_too_large"
    # The proxy stopped taking the body within its linger, long before the 128 MiB the
    # declared length (or the endless chunked body) would have taken.
    assert sender.error in ("BrokenPipeError", "ConnectionResetError"), sender.error
    assert sender.stopped_at - closed < REFUSAL_LINGER_SECONDS + 5
    print(f"{framing}: 413, then closed; {sender.sent / 2**20:.1f} MiB sent in all")
    assert attempts_seen(simulator.url, request_id) == 0
    assert sim_requests(simulator) == before
    assert_healthy(proxy, baseline, simulator)


def test_a_content_length_smaller_than_the_body_forwards_only_the_declared_bytes(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess
) -> None:
    """The proxy cannot know a client "lied": the declared length frames the body, and
    what follows it (3 MiB here, over the body limit) is parsed as a next request, which
    is garbage. The first request is answered, then the garbage is refused 400 with a
    close; the declared bytes go upstream, once."""
    request_id, before = new_id(), sim_requests(simulator)
    excess = b"x" * (MAX_BODY + 1024 * 1024)
    answer = send(
        proxy,
        chat_head(request_id, b"Content-Length: %d\r\n\r\n" % len(CHAT_BODY)) + CHAT_BODY + excess,
    )
    assert statuses_of(answer) == [200, 400], answer[:500]
    assert ends_with_parser_refusal(answer), answer[-500:]
    assert attempts_seen(simulator.url, request_id) == 1
    assert sim_requests(simulator) - before == 1
    record = httpx.get(f"{simulator.url}/_sim/requests/{request_id}").json()
    assert base64.b64decode(record["body_b64"]) == CHAT_BODY
    assert_healthy(proxy, baseline, simulator)


def test_garbage_pipelined_behind_requests_is_refused_after_their_answers(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess
) -> None:
    """Two requests and then garbage in one write: the upstream answers slowly, so the
    garbage is parsed while both are still being answered; their answers go out first,
    in order, then the parser's refusal and the close."""
    ids, before = [new_id(), new_id()], sim_requests(simulator)
    slow = b"X-Sim-Latency-Ms: 300\r\nContent-Length: %d\r\n\r\n" % len(CHAT_BODY)
    requests = b"".join(chat_head(request_id, slow) + CHAT_BODY for request_id in ids)
    answer = send(proxy, requests + b"\x00garbage\r\n\r\n")
    assert statuses_of(answer) == [200, 200, 400], answer[:500]
    assert ends_with_parser_refusal(answer), answer[-500:]
    ids_answered = re.findall(rb"x-request-id: ([^\r]+)\r\n", answer)
    assert ids_answered[:2] == [request_id.encode() for request_id in ids]
    # The garbage is a request of its own, with an id of its own.
    assert len(ids_answered) == 3 and ids_answered[2] not in ids_answered[:2]
    assert [attempts_seen(simulator.url, request_id) for request_id in ids] == [1, 1]
    assert sim_requests(simulator) - before == 2
    assert_healthy(proxy, baseline, simulator)


def test_a_broken_chunked_body_is_refused_with_the_clients_request_id_and_logged(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess
) -> None:
    request_id, before = new_id(), sim_requests(simulator)
    counted_before = scrape(proxy.url)
    answer = send(
        proxy,
        chat_head(request_id, b"Transfer-Encoding: chunked\r\n\r\n")
        + b"%x\r\n%s\r\nnot-hex\r\n" % (len(CHAT_BODY), CHAT_BODY),
    )
    assert ends_with_parser_refusal(answer), answer[:500]
    assert headers_of(answer)["x-request-id"] == request_id
    assert sim_requests(simulator) - before == 0

    # The application saw the request start: it counts the refusal as its answer, not as
    # a client that left (499), and the access log says so next to the refusal's line.
    def lines() -> list[str]:
        return [line for line in proxy.log().splitlines() if request_id in line]

    wait_until(lambda: len(lines()) == 2, timeout=HANG)
    refusal, access = sorted(lines(), key=lambda line: "zai_proxy.access" in line)
    assert "refused" in refusal and "400 invalid_http_request" in refusal, refusal
    assert "status=400" in access, access
    counted = scrape(proxy.url)
    for status, more in (("400", 1), ("499", 0)):
        added = counted.value("proxy_requests_total", status=status) - counted_before.value(
            "proxy_requests_total", status=status
        )
        assert added == more, (status, added)
    assert_healthy(proxy, baseline, simulator)


def test_a_body_cut_short_by_a_close_never_reaches_the_upstream(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess
) -> None:
    request_id, before = new_id(), sim_requests(simulator)
    closed_before = scrape(proxy.url).value("proxy_requests_total", status="499")
    head = chat_head(request_id, b"Content-Length: %d\r\n\r\n" % len(CHAT_BODY))
    with socket.create_connection(("127.0.0.1", port_of(proxy.url)), timeout=HANG) as sock:
        sock.sendall(head + CHAT_BODY[:10])
    # Nobody is left to answer: the proxy records the request as closed by its client.
    wait_until(
        lambda: scrape(proxy.url).value("proxy_requests_total", status="499") - closed_before == 1,
        HANG,
    )
    assert attempts_seen(simulator.url, request_id) == 0
    assert sim_requests(simulator) == before
    assert_healthy(proxy, baseline, simulator)


def test_a_body_that_stalls_gets_408_after_the_body_timeout(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess
) -> None:
    request_id, before = new_id(), sim_requests(simulator)
    head = chat_head(request_id, b"Content-Length: %d\r\n\r\n" % len(CHAT_BODY))
    with socket.create_connection(("127.0.0.1", port_of(proxy.url)), timeout=HANG) as sock:
        sock.sendall(head + CHAT_BODY[:10])
        started = time.monotonic()
        answer = read_until_close(sock)
        took = time.monotonic() - started
    assert status_of(answer) == 408, answer[:300]
    assert proxy_error_of(answer) == "request_timeout"
    assert headers_of(answer)["connection"] == "close"
    assert BODY_TIMEOUT * 0.8 < took < BODY_TIMEOUT + HANG
    print(f"a body that stalls: 408 after {took:.2f} s")
    assert attempts_seen(simulator.url, request_id) == 0
    assert sim_requests(simulator) == before
    assert_healthy(proxy, baseline, simulator)


ENDLESS_TRAILERS = {
    # Each field ends: uvicorn would keep every one as a header.
    "many fields": b"X-Trailer: %s\r\n" % (b"a" * 50) * 1000,
    # One field that never ends: httptools concatenates it, read by read.
    "one field that never ends": b"a" * 65536,
}


@pytest.mark.parametrize("pieces", ENDLESS_TRAILERS.values(), ids=ENDLESS_TRAILERS.keys())
def test_a_chunked_trailer_over_the_head_limit_gets_431_at_once_and_memory_stays_flat(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess, pieces: bytes
) -> None:
    """Trailer fields are not headers and none is kept (uvicorn would keep every one, in
    memory, and forward them upstream as headers); they count against the head limit, so
    a trailer that never ends is refused as soon as it is larger than a head may be."""
    request_id, before = new_id(), sim_requests(simulator)
    first = b"X-Trailer: " if pieces.startswith(b"a") else b""
    with (
        socket.create_connection(("127.0.0.1", port_of(proxy.url)), timeout=HANG) as sock,
        RSSSampler(proxy.process.pid) as rss,
    ):
        sock.sendall(
            chat_head(request_id, b"Transfer-Encoding: chunked\r\n\r\n")
            + b"%x\r\n%s\r\n0\r\n%s" % (len(CHAT_BODY), CHAT_BODY, first)
        )
        started = time.monotonic()
        with Sender(sock, itertools.repeat(pieces)) as sender:
            answer = read_until_close(sock)
            took = time.monotonic() - started
            sender.wait(REFUSAL_LINGER_SECONDS + HANG)
    print(
        f"an endless trailer ({len(pieces)} B pieces): {status_of(answer)} after {took:.2f} s "
        f"and {sender.sent / 2**20:.1f} MiB; proxy RSS +{rss.growth / 2**20:.1f} MiB at most"
    )
    assert status_of(answer) == 431, answer[:300]
    assert proxy_error_of(answer) == "request_header_too_large"
    assert headers_of(answer)["connection"] == "close"
    assert took < BODY_TIMEOUT  # refused, not timed out
    assert rss.growth < 16 * 2**20
    assert attempts_seen(simulator.url, request_id) == 0
    assert sim_requests(simulator) == before
    assert_healthy(proxy, baseline, simulator)


EARLY_ANSWERS = {
    "a declared body over the limit (413)": (b"/v1/chat/completions", 64 * MAX_BODY, 413),
    "a target off the upstream (400)": (b"http://evil.example/v1/chat/completions", 1000, 400),
}


@pytest.mark.parametrize("case", EARLY_ANSWERS.values(), ids=EARLY_ANSWERS.keys())
def test_an_answer_before_the_body_says_connection_close_then_closes(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess, case: Any
) -> None:
    """A keep-alive client that gets its answer before it sent its body learns from the
    answer that the connection ends (else its next request would meet an EOF)."""
    target, length, status = case
    request_id, before = new_id(), sim_requests(simulator)
    head = b"POST %s HTTP/1.1\r\nHost: proxy\r\nX-Request-Id: %s\r\nContent-Length: %d\r\n\r\n" % (
        target,
        request_id.encode(),
        length,
    )
    with socket.create_connection(("127.0.0.1", port_of(proxy.url)), timeout=HANG) as sock:
        sock.sendall(head)
        answer = read_until_close(sock)
    assert status_of(answer) == status, answer[:300]
    assert headers_of(answer)["connection"] == "close", answer[:300]
    assert len(statuses_of(answer)) == 1
    assert sim_requests(simulator) == before
    assert_healthy(proxy, baseline, simulator)


@pytest.fixture(scope="module")
def locked(simulator: SimulatorProcess, served_by: str) -> Iterator[ServiceProcess]:
    """A proxy that takes only a configured client key."""
    with start_served(
        served_by, simulator.url, env={**ENV, "PROXY_API_KEYS": "alice:alice-key-0001"}
    ) as service:
        yield service


def test_a_401_before_the_body_says_connection_close_then_closes(
    locked: ServiceProcess, simulator: SimulatorProcess
) -> None:
    """The key is refused from the head: a keep-alive client not done sending its body
    learns from the answer that the connection ends."""
    request_id, before = new_id(), sim_requests(simulator)
    head = chat_head(request_id, b"Authorization: Bearer wrong-key-0000\r\n"
                     b"Content-Length: %d\r\n\r\n" % (64 * MAX_BODY))  # fmt: skip
    with socket.create_connection(("127.0.0.1", port_of(locked.url)), timeout=HANG) as sock:
        sock.sendall(head)
        answer = read_until_close(sock)
    assert status_of(answer) == 401, answer[:300]
    assert headers_of(answer)["connection"] == "close", answer[:300]
    assert len(statuses_of(answer)) == 1
    assert attempts_seen(simulator.url, request_id) == 0
    assert sim_requests(simulator) == before


def test_a_body_trickled_forever_gets_408_after_the_total_body_timeout(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess
) -> None:
    """One byte every half second never leaves CLIENT_BODY_TIMEOUT's silence, but the
    body as a whole has CLIENT_BODY_TOTAL_TIMEOUT."""
    request_id, before = new_id(), sim_requests(simulator)
    head = chat_head(request_id, b"Content-Length: %d\r\n\r\n" % len(CHAT_BODY))
    with socket.create_connection(("127.0.0.1", port_of(proxy.url)), timeout=HANG) as sock:
        sock.sendall(head)
        started = time.monotonic()
        with Sender(sock, (CHAT_BODY[i : i + 1] for i in range(len(CHAT_BODY))), gap=0.5):
            answer = read_until_close(sock)
        took = time.monotonic() - started
    print(f"a trickled body: {status_of(answer)} after {took:.2f} s")
    assert status_of(answer) == 408, answer[:300]
    assert proxy_error_of(answer) == "request_timeout"
    assert headers_of(answer)["connection"] == "close"
    assert BODY_TOTAL_TIMEOUT * 0.8 < took < BODY_TOTAL_TIMEOUT + HANG
    assert attempts_seen(simulator.url, request_id) == 0
    assert sim_requests(simulator) == before
    assert_healthy(proxy, baseline, simulator)


# A replica with its default body limits (32 MiB a body, 256 MiB of bodies in all) and a
# small worker pool and queue, for crowds of uploads.
CROWDED_ENV = {"MAX_WORKERS": "2", "MAX_QUEUE": "2", "MAX_RETRIES": "0"}
UPLOAD_BYTES = 31 * 2**20


@pytest.fixture(scope="module")
def crowded(simulator: SimulatorProcess, served_by: str) -> Iterator[ServiceProcess]:
    with start_served(served_by, simulator.url, env=CROWDED_ENV) as service:
        yield service


def upload(port: int, body: bytes, extra: bytes = b"") -> tuple[bytes, int]:
    """POST a body in 1 MiB writes, as fast as the proxy takes it; the answer, and how
    many bytes of the body went out before the answer's first bytes came back."""
    head = chat_head(new_id(), b"Content-Length: %d\r\nConnection: close\r\n%s\r\n" % (
        len(body), extra))  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=HANG * 4) as sock:
        sock.sendall(head)
        pieces = (body[i : i + 2**20] for i in range(0, len(body), 2**20))
        with Sender(sock, pieces) as sender:
            sock.settimeout(HANG * 4)
            answer = b""
            sent = -1
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    if sent < 0:
                        sent = sender.sent
                    answer += chunk
            if sent < 0:
                sent = sender.sent
    return answer, sent


def test_a_crowd_of_large_uploads_is_held_to_the_body_budget_and_the_rest_refused_unread(
    crowded: ServiceProcess, simulator: SimulatorProcess
) -> None:
    """40 uploads of 31 MiB at once: the budget (256 MiB) holds 8 of them; the others get
    503 with Retry-After before their bodies are read, and memory grows by about what the
    budget holds, not by 1.2 GiB."""
    body = orjson.dumps(
        {"model": "glm-4.6", "messages": [{"role": "user", "content": "a" * (UPLOAD_BYTES - 80)}]}
    )
    assert len(body) <= UPLOAD_BYTES
    port = port_of(crowded.url)
    with RSSSampler(crowded.process.pid) as rss, ThreadPoolExecutor(40) as pool:
        results = list(pool.map(lambda _: upload(port, body), range(40)))
    statuses = [status_of(answer) for answer, _ in results]
    refused = [
        (answer, sent) for answer, sent in results
        if proxy_error_of(answer) == "proxy_overloaded"
    ]  # fmt: skip
    print(
        f"40 uploads of {len(body) / 2**20:.0f} MiB: {sorted(statuses)}; proxy RSS "
        f"+{rss.growth / 2**20:.0f} MiB at most; refused uploads sent "
        f"{sorted(round(sent / 2**20, 1) for _, sent in refused)} MiB before their answer"
    )
    assert all(status in (200, 503) for status in statuses), statuses
    assert statuses.count(200) >= 1
    # At most 8 bodies fit the budget: every other upload is refused, and refused before
    # its body was read: the answer comes back while most of the body is still unsent
    # (what went out sits in the sockets' buffers, a few MiB on loopback).
    assert len(refused) >= 32
    unread = [sent for _, sent in refused if sent < UPLOAD_BYTES // 4]
    assert len(unread) >= 32, sorted(sent for _, sent in refused)
    for answer, _ in refused:
        assert headers_of(answer)["retry-after"] == "1"
        assert headers_of(answer)["connection"] == "close"
    assert rss.growth < 400 * 2**20
    wait_until(lambda: scrape(crowded.url).value("proxy_in_flight_requests") == 0, HANG)


def test_a_request_that_finds_the_queue_full_is_refused_before_its_body_is_read(
    crowded: ServiceProcess, simulator: SimulatorProcess
) -> None:
    """Two slow requests hold both workers and two more fill the queue: the next one gets
    503 while its body is still unsent."""
    slow = b"X-Sim-Latency-Ms: 3000\r\n"
    port = port_of(crowded.url)
    with ThreadPoolExecutor(4) as pool:
        holders = [pool.submit(upload, port, CHAT_BODY, slow) for _ in range(4)]
        wait_until(
            lambda: scrape(crowded.url).value("proxy_queued_requests") >= 2, HANG, interval=0.02
        )
        head = chat_head(new_id(), b"Content-Length: %d\r\n\r\n" % len(CHAT_BODY))
        answer = exchange(port, head, timeout=HANG)  # the body is never sent
        assert [status_of(h.result()[0]) for h in holders] == [200] * 4
    assert status_of(answer) == 503, answer[:300]
    assert proxy_error_of(answer) == "proxy_overloaded"
    assert headers_of(answer)["connection"] == "close"
    assert headers_of(answer)["retry-after"] == "1"


# The upstream, not the proxy, judges a body: these pass through byte for byte, are
# counted as unparseable, and the simulator's own 400 comes back unchanged.
MALFORMED_BODIES = {
    "invalid UTF-8": b'{"model":"glm-4.6","messages":[{"role":"user","content":"\xff\xfe\xc3("}]}',
    "not JSON, sent as application/json": b"model=glm-4.6&messages=hi",
    "JSON cut short": b'{"model":"glm-4.6","messages":[{"role":"us',
    "NUL bytes": b'{"model":"glm-4.6"\x00,"messages":[]}',
    "100,000 open brackets": b"[" * 100_000,
    "100,000 nested arrays in a request": (
        b'{"model":"glm-4.6","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    ),
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_bodies_pass_through_byte_for_byte_and_are_counted_unparseable(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess, body: bytes
) -> None:
    request_id, before = new_id(), sim_requests(simulator)
    unparseable = scrape(proxy.url).value("proxy_request_unparseable_total")
    response = post_chat(
        proxy, body, {"content-type": "application/json", "x-request-id": request_id}
    )
    assert response.status_code == 400
    assert "x-proxy-error" not in response.headers  # the upstream's answer, passed on
    assert response.json()["error"]["message"] == "the request body is not a JSON object"
    record = httpx.get(f"{simulator.url}/_sim/requests/{request_id}").json()
    assert record["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert sim_requests(simulator) - before == 1
    assert scrape(proxy.url).value("proxy_request_unparseable_total") - unparseable == 1
    assert_healthy(proxy, baseline, simulator)


def estimated_input(proxy: ServiceProcess) -> float:
    return scrape(proxy.url).value("proxy_token_input_total", source="estimate", model="glm-4.6")


def test_nesting_as_deep_as_the_parser_allows_is_estimated_without_a_recursive_walk(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess
) -> None:
    """1,000 levels parse (orjson stops at 1,024) and reach the token estimate, which
    must neither recurse nor fail on them (serialising `tools` for it hits orjson's
    own limit, which counts them as nothing)."""
    body = (
        b'{"model":"glm-4.6","messages":[{"role":"user","content":[[[["deep"]]]]},'
        b'{"role":"user","content":"hi"}],"tools":' + b"[" * 1000 + b"]" * 1000 + b"}"
    )
    request_id, before = new_id(), estimated_input(proxy)
    response = post_chat(proxy, body, {"x-request-id": request_id, "x-sim-usage": "none"})
    assert response.status_code == 200, response.text
    record = httpx.get(f"{simulator.url}/_sim/requests/{request_id}").json()
    assert record["body_sha256"] == hashlib.sha256(body).hexdigest()
    wait_until(lambda: estimated_input(proxy) > before, HANG)
    assert_healthy(proxy, baseline, simulator)


def test_fifty_thousand_messages_are_forwarded_and_estimated(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess
) -> None:
    messages = 50_000
    body = orjson.dumps(
        {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}] * messages}
    )
    assert len(body) < MAX_BODY
    request_id, before = new_id(), estimated_input(proxy)
    started = time.monotonic()
    response = post_chat(proxy, body, {"x-request-id": request_id, "x-sim-usage": "none"})
    assert response.status_code == 200, response.text
    record = httpx.get(f"{simulator.url}/_sim/requests/{request_id}").json()
    assert record["body_sha256"] == hashlib.sha256(body).hexdigest()
    # Three tokens of chat overhead per message, on top of the text's own.
    wait_until(lambda: estimated_input(proxy) - before >= 3 * messages + messages, HANG)
    print(
        f"{messages} messages ({len(body) / 2**20:.1f} MiB): 200 and estimated in "
        f"{time.monotonic() - started:.2f} s"
    )
    assert_healthy(proxy, baseline, simulator)


# --- heads ----------------------------------------------------------------------------------

OVERSIZED_HEADS = {
    "one 16 KiB header": b"X-Big: %s\r\n" % (b"a" * 16384),
    "1,000 small headers": b"".join(b"X-Header-%d: v\r\n" % i for i in range(1000)),
}


@pytest.mark.parametrize("pieces", [1, 64], ids=["in one write", "in 64 writes"])
@pytest.mark.parametrize("kind", [*OVERSIZED_HEADS, "a 16 KiB target"])
def test_a_head_over_the_limit_gets_431_and_the_connection_closes(
    proxy: ServiceProcess,
    baseline: Baseline,
    simulator: SimulatorProcess,
    kind: str,
    pieces: int,
) -> None:
    """In one write the whole head usually arrives in one read, complete; in many it is
    refused while it is still arriving. Either way: 431."""
    request_id, before = new_id(), sim_requests(simulator)
    target = b"/v1/chat/completions"
    if kind == "a 16 KiB target":
        target += b"?q=" + b"a" * 16384
    head = b"POST %s HTTP/1.1\r\nHost: proxy\r\nX-Request-Id: %s\r\n%s" % (
        target,
        request_id.encode(),
        OVERSIZED_HEADS.get(kind, b""),
    )
    request = head + b"Content-Length: %d\r\n\r\n%s" % (len(CHAT_BODY), CHAT_BODY)
    size = -(-len(request) // pieces)
    with socket.create_connection(("127.0.0.1", port_of(proxy.url)), timeout=HANG) as sock:
        parts = (request[i : i + size] for i in range(0, len(request), size))
        with Sender(sock, parts, gap=0.01 if pieces > 1 else 0):
            answer = read_until_close(sock)
    assert status_of(answer) == 431, answer[:300]
    assert proxy_error_of(answer) == "request_header_too_large"
    assert headers_of(answer)["connection"] == "close"
    assert attempts_seen(simulator.url, request_id) == 0
    assert sim_requests(simulator) == before
    assert_healthy(proxy, baseline, simulator)


def test_a_head_trickled_slower_than_the_timeout_gets_408(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess
) -> None:
    request_id, before = new_id(), sim_requests(simulator)
    request = chat_head(request_id, b"Content-Length: %d\r\n\r\n" % len(CHAT_BODY)) + CHAT_BODY
    # One byte every 0.1 s: the head would take about 12 s, the timeout is 1.5 s.
    with socket.create_connection(("127.0.0.1", port_of(proxy.url)), timeout=HANG) as sock:
        started = time.monotonic()
        with Sender(sock, (request[i : i + 1] for i in range(len(request))), gap=0.1) as sender:
            answer = read_until_close(sock)
        took = time.monotonic() - started
    assert status_of(answer) == 408, answer[:300]
    assert proxy_error_of(answer) == "request_timeout"
    assert headers_of(answer)["connection"] == "close"
    assert HEAD_TIMEOUT * 0.8 < took < HEAD_TIMEOUT + HANG
    assert sender.sent < len(request)
    print(f"a trickled head: 408 after {took:.2f} s, {sender.sent} bytes in")
    assert attempts_seen(simulator.url, request_id) == 0
    assert sim_requests(simulator) == before
    assert_healthy(proxy, baseline, simulator)


def test_a_connection_that_sends_nothing_is_closed_after_the_timeout(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess
) -> None:
    with socket.create_connection(("127.0.0.1", port_of(proxy.url)), timeout=HANG) as sock:
        started = time.monotonic()
        answer = read_until_close(sock)
        took = time.monotonic() - started
    assert answer == b""  # nothing was asked, so nothing is answered
    assert HEAD_TIMEOUT * 0.8 < took < HEAD_TIMEOUT + HANG
    print(f"a silent connection: closed after {took:.2f} s")
    assert_healthy(proxy, baseline, simulator)


@pytest.mark.parametrize("method", [b"TRACE", b"CONNECT"])
def test_trace_and_connect_are_refused_and_never_reach_the_upstream(
    proxy: ServiceProcess, baseline: Baseline, simulator: SimulatorProcess, method: bytes
) -> None:
    """TRACE asks the upstream to echo the request it got, upstream key included; CONNECT
    asks for a tunnel (aiohttp would open one to the upstream's own host and port, with
    the key). Neither is forwarded."""
    request_id = new_id()
    answer = send(
        proxy,
        b"%s /v1/models HTTP/1.1\r\nHost: proxy\r\nX-Request-Id: %s\r\n"
        b"Connection: close\r\n\r\n" % (method, request_id.encode()),
    )
    assert status_of(answer) == 405, answer[:300]
    assert proxy_error_of(answer) == "method_not_allowed"
    assert "POST" in headers_of(answer)["allow"]
    assert attempts_seen(simulator.url, request_id) == 0
    assert_healthy(proxy, baseline, simulator)


def test_answers_carry_one_date_and_no_server_header_of_the_proxys_own(
    guarded: ServiceProcess, guarded_baseline: Baseline, recorder: RecordingUpstream
) -> None:
    """The upstream's Date passes through (the recording upstream sends none), and
    uvicorn adds neither a Date of its own nor `server: uvicorn`."""
    answer = send(guarded, b"GET /v1/models HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200, answer[:300]
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"\r\ndate:" not in head, head
    assert b"\r\nserver:" not in head, head
    assert_healthy(guarded, guarded_baseline)


# --- framing and injection ------------------------------------------------------------------

POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
SMUGGLED = b"GET /v1/models?smuggled=1 HTTP/1.1\r\nHost: proxy\r\n\r\n"

# Framings that two parsers could read differently. The proxy's parser refuses each
# before the application sees a body, so neither request goes upstream.
AMBIGUOUS_FRAMING = {
    "Content-Length, then Transfer-Encoding (CL.TE)": (
        b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding, then Content-Length (TE.CL)": (
        b"Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n"
    ),
    "two different Content-Lengths": b"Content-Length: 2\r\nContent-Length: 60\r\n\r\n{}",
    "two equal Content-Lengths": b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "a Content-Length list": b"Content-Length: 2, 2\r\n\r\n{}",
    "a negative Content-Length": b"Content-Length: -1\r\n\r\n",
    "a signed Content-Length": b"Content-Length: +2\r\n\r\n{}",
    "an overflowing Content-Length": b"Content-Length: 99999999999999999999999\r\n\r\n{}",
    "a space before the colon": b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "a vertical tab before chunked": b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    "chunked not the last coding": b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "Transfer-Encoding twice": (
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"
    ),
    "an unknown coding only": b"Transfer-Encoding: gzip\r\n\r\n{}",
    "a chunk size that is not hex": b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "an overflowing chunk size": (
        b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n{}\r\n0\r\n\r\n"
    ),
    "chunk lines ended by bare LF": b"Transfer-Encoding: chunked\r\n\r\n2\n{}\n0\n\n",
    "whitespace after a chunk size": b"Transfer-Encoding: chunked\r\n\r\n2 \r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("framing", AMBIGUOUS_FRAMING.values(), ids=AMBIGUOUS_FRAMING.keys())
def test_ambiguous_framing_is_refused_and_no_request_reaches_the_upstream(
    guarded: ServiceProcess,
    guarded_baseline: Baseline,
    recorder: RecordingUpstream,
    framing: bytes,
) -> None:
    before = len(recorder.received)
    answer = send(guarded, POST + framing + SMUGGLED)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert ends_with_parser_refusal(answer), answer[:500]  # one answer, then the close
    assert len(recorder.received) == before
    assert_healthy(guarded, guarded_baseline)
    assert not any(b"smuggled" in request.target for request in recorder.received)


@pytest.mark.parametrize("coding", [b"chunked", b"CHUNKED"])
def test_a_chunked_body_is_reframed_with_a_content_length_and_its_trailer_dropped(
    guarded: ServiceProcess,
    guarded_baseline: Baseline,
    recorder: RecordingUpstream,
    coding: bytes,
) -> None:
    """The upstream never sees the client's framing, only the body the proxy parsed with
    a Content-Length of its own: no framing trick can split a request differently there.
    A trailer field stays at the proxy (it is not a header)."""
    before = len(recorder.received)
    chunks = b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(part), part)
        for part in (CHAT_BODY[:7], CHAT_BODY[7:20], CHAT_BODY[20:])
    )
    answer = send(
        guarded,
        POST
        + b"Transfer-Encoding: %s\r\nConnection: close\r\n\r\n" % coding
        + chunks
        + b"0\r\nX-Trailer: evil\r\n\r\n",
    )
    assert status_of(answer) == 200, answer[:300]
    (received,) = recorder.received[before:]
    assert received.body == CHAT_BODY
    assert received.header(b"content-length") == [str(len(CHAT_BODY)).encode()]
    assert received.header(b"transfer-encoding") == []
    assert received.header(b"x-trailer") == []
    assert_healthy(guarded, guarded_baseline)


# CR, LF or NUL inside a head (and obs-fold continuation lines) could start a header of
# their own on a lenient hop; the proxy's parser refuses them outright.
RAW_INJECTION = {
    "a bare CR in a value": b"X-Note: a\rInjected: yes\r\n",
    "a bare LF in a value": b"X-Note: a\nInjected: yes\r\n",
    "an obs-fold line": b"X-Note: a\r\n Injected: yes\r\n",
    "a tab-folded line": b"X-Note: a\r\n\tInjected: yes\r\n",
    "a NUL in a value": b"X-Note: a\x00Injected: yes\r\n",
    "a control byte in a value": b"X-Note: a\x01b\r\n",
    "DEL in a value": b"X-Note: a\x7fb\r\n",
    "a CR in a name": b"X-No\rte: a\r\n",
    "a space in a name": b"X Note: a\r\n",
    "an empty name": b": a\r\n",
}


@pytest.mark.parametrize("line", RAW_INJECTION.values(), ids=RAW_INJECTION.keys())
def test_raw_line_breaks_and_control_bytes_in_a_head_are_refused_by_the_parser(
    guarded: ServiceProcess,
    guarded_baseline: Baseline,
    recorder: RecordingUpstream,
    line: bytes,
) -> None:
    before = len(recorder.received)
    answer = send(
        guarded, b"GET /v1/models HTTP/1.1\r\nHost: proxy\r\n" + line + b"Connection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400 ") and ends_with_parser_refusal(answer), answer[:300]
    assert len(recorder.received) == before
    assert_healthy(guarded, guarded_baseline)


def test_encoded_line_breaks_pass_through_as_text_and_make_no_header_upstream(
    guarded: ServiceProcess, guarded_baseline: Baseline, recorder: RecordingUpstream
) -> None:
    before = len(recorder.received)
    answer = send(
        guarded,
        b"GET /v1/models?q=%0d%0aInjected:%20yes HTTP/1.1\r\nHost: evil.example\r\n"
        b"X-Note: a%0d%0aInjected: yes\r\nX-Forwarded-Host: evil.example\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status_of(answer) == 200, answer[:300]
    (received,) = recorder.received[before:]
    assert received.target == b"/api/paas/v4/models?q=%0d%0aInjected:%20yes"
    assert received.header(b"x-note") == [b"a%0d%0aInjected: yes"]
    assert b"\r\nx-note: a%0d%0aInjected: yes\r\n" in received.head
    assert received.header(b"injected") == []
    assert received.header(b"host") == [recorder.host]  # the client's Host stays behind
    assert_healthy(guarded, guarded_baseline)


# RFC 9112 3.2 and 2.3: what httptools lets through and a strict front door refuses.
LENIENT_HEADS = {
    "HTTP/1.1 without Host": b"GET /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n",
    "two Hosts": (
        b"GET /v1/models HTTP/1.1\r\nHost: proxy\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    ),
    "two Hosts in HTTP/1.0": (
        b"GET /v1/models HTTP/1.0\r\nHost: proxy\r\nHost: evil.example\r\n\r\n"
    ),
    # Read as HTTP/0.9, its next lines as headers: x-injected reached the upstream.
    "a request line without a version": (
        b"GET /v1/models\r\nHost: proxy\r\nX-Injected: yes HTTP/1.1\r\n\r\n"
    ),
}


@pytest.mark.parametrize("head", LENIENT_HEADS.values(), ids=LENIENT_HEADS.keys())
def test_a_missing_or_doubled_host_and_a_versionless_request_line_are_refused(
    guarded: ServiceProcess, guarded_baseline: Baseline, recorder: RecordingUpstream, head: bytes
) -> None:
    before = len(recorder.received)
    answer = send(guarded, head)
    assert answer.startswith(b"HTTP/1.1 400 ") and ends_with_parser_refusal(answer), answer[:300]
    assert len(recorder.received) == before
    assert_healthy(guarded, guarded_baseline)


def test_an_http_1_0_request_without_host_is_served(
    guarded: ServiceProcess, guarded_baseline: Baseline, recorder: RecordingUpstream
) -> None:
    """HTTP/1.0 has no Host requirement (RFC 9112 3.2 asks it of HTTP/1.1 only)."""
    before = len(recorder.received)
    answer = send(guarded, b"GET /v1/models HTTP/1.0\r\n\r\n")
    assert status_of(answer) == 200, answer[:300]
    assert len(recorder.received) == before + 1
    assert_healthy(guarded, guarded_baseline)


# --- targets --------------------------------------------------------------------------------

# (target, what answers): "router" is the proxy's 400 invalid_request_target, "parser" the
# HTTP parser's 400, anything else the path the upstream must receive (always under its
# base). {evil} is a live server that must never be contacted.
TARGETS = [
    (b"http://{evil}/v1/models", "router"),
    (b"https://{evil}/v1/models", "router"),
    (b"HTTP://{evil}/v1/models", "router"),
    (b"//{evil}/v1/models", "router"),
    (b"///{evil}/v1/models", "router"),
    (b"/\\{evil}/v1/models", "router"),
    (b"/%2f{evil}/v1/models", "router"),
    (b"/%5c{evil}/v1/models", "router"),
    (b"/v1/../../{evil}", "router"),
    (b"/v1/%2e%2e/%2e%2e/x", "router"),
    (b"/v1/.%2E/x", "router"),
    (b"/v1%2f..%2f..%2fx", "router"),
    (b"/v1\\..\\..\\x", "router"),
    (b"/v1/models%0d%0aHost:%20{evil}", "router"),
    (b"*", "router"),
    (b"{evil}", "parser"),
    (b"@{evil}/v1/models", "parser"),
    (b"/v1/mo\tdels", "parser"),
    (b"/v1/mod\xc3\xa9ls", "parser"),
    (b"/@{evil}/v1/models", b"/api/paas/v4/@{evil}/v1/models"),
    (b"/v1/models;@{evil}", b"/api/paas/v4/models;@{evil}"),
    (b"/v1/models%23@{evil}", b"/api/paas/v4/models%23@{evil}"),
    (b"/v1/models#@{evil}/x", b"/api/paas/v4/models"),
    (b"/v1/%252e%252e/x", b"/api/paas/v4/%252e%252e/x"),
    (b"/v1/models?next=http://{evil}/x", b"/api/paas/v4/models?next=http://{evil}/x"),
]


def test_no_target_reaches_anything_but_the_configured_upstream(
    guarded: ServiceProcess,
    guarded_baseline: Baseline,
    recorder: RecordingUpstream,
    evil: ScriptedServer,
) -> None:
    evil_host = f"127.0.0.1:{evil.port}".encode()
    contacted = evil.connections
    for template, expected in TARGETS:
        target = template.replace(b"{evil}", evil_host)
        before = len(recorder.received)
        answer = send(
            guarded,
            b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (target, evil_host),
        )
        forwarded = recorder.received[before:]
        if expected == "router":
            assert status_of(answer) == 400, (target, answer[:300])
            assert proxy_error_of(answer) == "invalid_request_target", target
            assert forwarded == [], target
        elif expected == "parser":
            assert answer.startswith(b"HTTP/1.1 400 "), (target, answer[:300])
            assert ends_with_parser_refusal(answer), (target, answer[:300])
            assert forwarded == [], target
        else:
            assert isinstance(expected, bytes)
            assert status_of(answer) == 200, (target, answer[:300])
            (received,) = forwarded
            assert received.target == expected.replace(b"{evil}", evil_host), target
            assert received.header(b"host") == [recorder.host], target
    assert evil.connections == contacted
    assert_healthy(guarded, guarded_baseline)


# --- fuzz -----------------------------------------------------------------------------------

EVIL = b"{evil}"  # replaced by the live address no request may reach
TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
URL_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%?#\\"
VALUE_CHARS = string.ascii_letters + string.digits + string.punctuation + " \t"


def ascii_text(alphabet: str, min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[bytes]:
    return st.text(alphabet, min_size=min_size, max_size=max_size).map(str.encode)


TARGET_STARTS = b"/v1/chat/completions /v1/messages /v1/models /v1/ / /v1/%2e%2e/".split()
TARGET_STARTS += [b"//" + EVIL + b"/", b"http://" + EVIL + b"/", b"/@" + EVIL]
HEADER_NAMES = (
    b"Host Connection Expect Upgrade Authorization X-Api-Key X-Request-Id Content-Type "
    b"Proxy-Connection TE Trailer X-Forwarded-Host Accept-Encoding x-sim-status"
).split()
HEADER_VALUES = b"close keep-alive 100-continue h2c websocket Upgrade chunked gzip 500".split()
HEADER_VALUES += [EVIL, b"http://" + EVIL, b"Bearer client-key", b""]
# Each part of a request has a well-formed strategy and a hostile one; a request takes
# the hostile one for at most two of its parts, so that most requests get past the HTTP
# parser into the proxy's own code, and each corruption is seen on its own too.
WELL_FORMED: dict[str, st.SearchStrategy[Any]] = {
    "method": st.sampled_from(b"GET POST PUT PATCH DELETE HEAD OPTIONS TRACE PROPFIND".split()),
    "target": st.tuples(st.sampled_from(TARGET_STARTS), ascii_text(URL_CHARS)).map(b"".join),
    "version": st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    "name": st.one_of(st.sampled_from(HEADER_NAMES), ascii_text(TOKEN, min_size=1, max_size=12)),
    "value": st.one_of(st.sampled_from(HEADER_VALUES), ascii_text(VALUE_CHARS)),
    "framing": st.sampled_from(["exact", "short", "long", "chunked", "none"]),
}
HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "method": st.one_of(
        st.sampled_from([b"CONNECT", b"PRI", b"get", b"G\x00T", b""]),
        st.binary(min_size=1, max_size=8),
    ),
    "target": st.one_of(
        st.sampled_from([b"*", b"@" + EVIL, EVIL, b""]),
        st.tuples(st.sampled_from([b"/v1/models", b"/"]), st.binary(max_size=24)).map(b"".join),
    ),
    "version": st.sampled_from([b"HTTP/2.0", b"HTTP/1.1 extra", b"http/1.1", b"HTTP/9.9", b""]),
    "name": st.binary(min_size=1, max_size=12),
    "value": st.one_of(
        st.sampled_from(
            [b"a\r\nInjected: yes", b"a\r\n Injected: yes", b"a\rb", b"a\nb", b"a" * (MAX_HEAD + 1)]
        ),
        st.binary(max_size=24),  # control bytes, obs-text and all
    ),
    # Garbage or doubled lengths, bad chunks, a length and chunked at once.
    "framing": st.sampled_from(["garbage", "double", "bad chunks", "both"]),
}


@dataclass
class RawRequest:
    """One generated request, and whether the client leaves its body unfinished."""

    data: bytes
    unfinished: bool


@st.composite
def raw_requests(draw: st.DrawFn) -> RawRequest:
    hostile = draw(st.sets(st.sampled_from(sorted(HOSTILE)), max_size=2))

    def part(name: str) -> bytes:
        return draw(HOSTILE[name] if name in hostile else WELL_FORMED[name])

    body = draw(st.one_of(st.just(CHAT_BODY), st.binary(max_size=64)))
    framing = draw(HOSTILE["framing"] if "framing" in hostile else WELL_FORMED["framing"])
    head = [b"%s %s %s" % (part("method"), part("target"), part("version"))]
    head += [b"%s: %s" % (part("name"), part("value")) for _ in range(draw(st.integers(0, 5)))]
    sent = body
    if framing in ("exact", "short", "long", "both"):
        declared = len(body) + {"exact": 0, "short": -1, "long": 7, "both": 0}[framing]
        head.append(b"Content-Length: %d" % max(declared, 0))
    if framing == "garbage":
        head.append(b"Content-Length: " + draw(st.binary(max_size=8)))
    if framing == "double":
        head += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
    if framing in ("chunked", "bad chunks", "both"):
        head.append(b"Transfer-Encoding: chunked")
        sent = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        if framing == "bad chunks":
            sent = draw(st.binary(max_size=16)) + sent
    head.append(b"Connection: close")
    return RawRequest(b"\r\n".join(head) + b"\r\n\r\n" + sent, unfinished=framing == "long")


def fuzz_exchange(port: int, request: RawRequest) -> bytes:
    """Send one generated request; a client whose body is unfinished then ends its side
    (else it would only wait for the body timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=HANG) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request.data)
            if request.unfinished:
                sock.shutdown(socket.SHUT_WR)
        return read_until_close(sock)


def test_fuzzed_raw_requests_get_well_formed_answers_and_stay_on_the_upstream(
    guarded: ServiceProcess,
    guarded_baseline: Baseline,
    recorder: RecordingUpstream,
    evil: ScriptedServer,
) -> None:
    """Hypothesis writes requests from a grammar of methods, targets, versions, headers
    (control bytes included) and framings; each is answered with well-formed status lines
    and no 5xx, or closed cleanly."""
    port, evil_host = port_of(guarded.url), f"127.0.0.1:{evil.port}".encode()
    contacted, before = evil.connections, len(recorder.received)
    errors = scrape(guarded.url).value("proxy_upstream_errors_total")
    outcomes: dict[str, int] = {}

    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(raw_requests())
    def answered(request: RawRequest) -> None:
        data = request.data.replace(EVIL, evil_host)
        note(f"request: {data!r}")
        answer = fuzz_exchange(port, RawRequest(data, request.unfinished))
        outcome = f"{status_of(answer)} {proxy_error_of(answer) or 'parser'}"
        if answer.startswith(b"HTTP/1.1 200") or not answer:
            outcome = "200" if answer else "closed"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    started = time.monotonic()
    answered()
    print(f"fuzz: {sum(outcomes.values())} requests in {time.monotonic() - started:.1f} s, "
          f"answers {dict(sorted(outcomes.items()))}")  # fmt: skip

    assert evil.connections == contacted
    assert scrape(guarded.url).value("proxy_upstream_errors_total") == errors
    for received in recorder.received[before:]:
        assert received.header(b"host") == [recorder.host], received.head
        assert received.target.startswith((b"/api/paas/v4", b"/api/anthropic/")), received.head
    assert_healthy(guarded, guarded_baseline)
