"""Fixed-length answers written straight to ASGI `send`."""

from collections.abc import Sequence

from .types import Send

JSON = b"application/json"
_END = {"type": "http.response.body", "body": b"", "more_body": False}


class ConnectionBreak(Exception):
    """Raised after a partial answer so that the server drops the connection mid-body."""


async def send_body(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer `status` with `body` and a content-length."""
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_partial_body(send: Send, status: int, body: bytes, size: int) -> None:
    """Announce all of `body` but send only its first `size` bytes, then break the connection."""
    headers = [(b"content-type", JSON), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send(
        {"type": "http.response.body", "body": body[: min(size, len(body) - 1)], "more_body": True}
    )
    raise ConnectionBreak


async def send_empty(send: Send) -> None:
    """Answer 200 with no body at all."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
    )
    await send(_END)
