"""Client-side helpers that look at what the simulator puts on the wire."""

import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """Parse an SSE body into (event name, data) pairs the way the SSE spec tells clients to."""
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    data: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            if data or name is not None:
                events.append((name, "\n".join(data)))
            name, data = None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return events


def json_events(text: str) -> list[Any]:
    """The data of each SSE event as JSON, except OpenAI's final `[DONE]`, kept as a string."""
    return [data if data == "[DONE]" else json.loads(data) for _, data in parse_sse(text)]


def raw_request(
    url: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[bytes, list[bytes], bool]:
    """POST over a plain socket; returns (everything read, each recv() result, saw EOF)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: {parts.hostname}:{parts.port}",
        "content-type: application/json",
        f"content-length: {len(body)}",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    reads: list[bytes] = []
    eof = False
    deadline = time.monotonic() + timeout
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(request)
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                eof = True
                break
            reads.append(data)
            if b"".join(reads).endswith(b"\r\n0\r\n\r\n"):
                break
    return b"".join(reads), reads, eof


def dechunk(response: bytes) -> tuple[list[bytes], bool]:
    """Split a chunked HTTP/1.1 response into its chunks; True when the final 0-chunk came."""
    _, _, rest = response.partition(b"\r\n\r\n")
    chunks: list[bytes] = []
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            return chunks, True
        chunks.append(rest[:size])
        rest = rest[size + 2 :]
    return chunks, False
