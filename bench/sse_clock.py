"""A timestamping SSE upstream and a client that measures each event's delivery delay.

The upstream answers every POST with an OpenAI-style chunk stream of K events spaced G ms
apart; each event carries ``sent_ns``, ``time.monotonic_ns()`` taken just before the
event is written to the socket. The client notes ``time.monotonic_ns()`` when the bytes
completing an event have been read and records arrival - sent. CLOCK_MONOTONIC is one
clock for the whole machine on Linux, so the two are comparable across processes.

Raw asyncio on both sides (no HTTP library) so that what is measured is the path in
between: the kernel's loopback, and the proxy when there is one. K and G travel as
request headers (``x-clock-events``, ``x-clock-gap-ms``), which a proxy passes on.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection

import uvloop

EVENT = (
    b'data: {"id":"chatcmpl-clock","object":"chat.completion.chunk","created":0,'
    b'"model":"glm-4.6","choices":[{"index":0,"delta":{"content":"tick "},'
    b'"finish_reason":null}],"sent_ns":%d}\n\n'
)
# What a real upstream ends with when the client (or the proxy) asked for usage.
USAGE_EVENT = (
    b'data: {"id":"chatcmpl-clock","object":"chat.completion.chunk","created":0,'
    b'"model":"glm-4.6","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":%d,'
    b'"total_tokens":%d}}\n\n'
)
DONE_EVENT = b"data: [DONE]\n\n"
RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
REQUEST_BODY = json.dumps(
    {
        "model": "glm-4.6",
        "messages": [{"role": "user", "content": "Count the seconds, one word each."}],
        "stream": True,
    }
).encode()

_SENT = re.compile(rb'"sent_ns":(\d+)')
_HEADER = re.compile(rb"^([!-9;-~]+):[ \t]*(.*?)[ \t]*$", re.MULTILINE)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# --- upstream -------------------------------------------------------------------------


def _headers(head: bytes) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in _HEADER.findall(head.replace(b"\r\n", b"\n"))}


async def _answer(writer: asyncio.StreamWriter, events: int, gap: float) -> None:
    writer.write(RESPONSE_HEAD)
    for _ in range(events):
        await asyncio.sleep(gap)
        # Timestamp and write with nothing in between: the write goes to the socket now.
        writer.write(_chunk(EVENT % time.monotonic_ns()))
    tail = _chunk(USAGE_EVENT % (events, events + 20)) + _chunk(DONE_EVENT) + b"0\r\n\r\n"
    writer.write(tail)
    await writer.drain()


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive: answer requests on this connection until the peer closes it."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = _headers(head)
            await reader.readexactly(int(headers.get(b"content-length", b"0")))
            events = int(headers.get(b"x-clock-events", b"100"))
            gap = float(headers.get(b"x-clock-gap-ms", b"10")) / 1000
            await _answer(writer, events, gap)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve(ready: Connection) -> None:
    server = await asyncio.start_server(_serve_connection, "127.0.0.1", 0)
    ready.send(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def _upstream_main(ready: Connection) -> None:
    # The parent ends this process with SIGTERM; Ctrl-C is the parent's to handle.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    uvloop.run(_serve(ready))


@dataclass(frozen=True)
class ClockUpstream:
    """The running timestamping upstream: base URL and process id."""

    url: str
    pid: int


@contextmanager
def clock_upstream() -> Iterator[ClockUpstream]:
    """Run the timestamping upstream in its own process until the block ends."""
    parent, child = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.Process(target=_upstream_main, args=(child,), daemon=True)
    process.start()
    try:
        if not parent.poll(10):
            raise TimeoutError("the clock upstream did not start within 10 s")
        yield ClockUpstream(f"http://127.0.0.1:{parent.recv()}", process.pid or 0)
    finally:
        process.terminate()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()


# --- client ---------------------------------------------------------------------------


def _request(host: str, port: int, path: str, events: int, gap_ms: float) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer sk-client\r\naccept: text/event-stream\r\n"
        f"x-clock-events: {events}\r\nx-clock-gap-ms: {gap_ms}\r\n"
        f"content-length: {len(REQUEST_BODY)}\r\n\r\n"
    ).encode() + REQUEST_BODY


async def _body_pieces(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """The response body as it arrives (chunked framing removed)."""
    while True:
        if chunked:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                return
            piece = (await reader.readexactly(size + 2))[:-2]
        else:
            piece = await reader.read(1 << 16)
            if not piece:
                return
        yield piece


async def stream_delays(url: str, path: str, events: int, gap_ms: float) -> list[int]:
    """One stream: the delivery delay of each timestamped event, in nanoseconds."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(_request(host, int(port), path, events, gap_ms))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"stream answered {head.splitlines()[0]!r}")
        chunked = _headers(head).get(b"transfer-encoding", b"").lower() == b"chunked"
        delays: list[int] = []
        pending = b""
        async for piece in _body_pieces(reader, chunked):
            arrived = time.monotonic_ns()
            pending += piece
            *complete, pending = pending.split(b"\n\n")
            for event in complete:
                match = _SENT.search(event)
                if match:
                    delays.append(arrived - int(match[1]))
    finally:
        writer.close()
    if len(delays) != events:
        raise RuntimeError(f"expected {events} timestamped events, got {len(delays)}")
    return delays


async def _concurrent_delays(
    url: str, path: str, streams: int, events: int, gap_ms: float
) -> list[int]:
    async def one(index: int) -> list[int]:
        # Staggered starts, so the streams' events do not all land at the same instant.
        await asyncio.sleep(gap_ms / 1000 * index / streams)
        return await stream_delays(url, path, events, gap_ms)

    results = await asyncio.gather(*(one(i) for i in range(streams)))
    return [delay for result in results for delay in result]


def measure_delays(url: str, path: str, streams: int, events: int, gap_ms: float) -> list[int]:
    """Run `streams` concurrent streams of `events` events; every event's delay in ns."""
    return uvloop.run(_concurrent_delays(url, path, streams, events, gap_ms))
