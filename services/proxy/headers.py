"""Header rules between the client and the upstream.

Hop-by-hop headers (RFC 9110 section 7.6.1, and whatever ``Connection`` lists) are dropped
both ways. The client's credentials are replaced by the upstream key in the dialect's
form. ``Accept-Encoding`` is not forwarded: the proxy asks for identity encoding so it can
read usage out of every answer (docs/plan/0002-identity-encoding-upstream.md). Everything else
passes through unchanged, in order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from zai_proxy.proxy.routing import Dialect

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers the proxy sets itself (or, for credentials, replaces).
_REQUEST_OWNED = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"authorization",
    b"x-api-key",
    b"accept-encoding",
    b"expect",
}
_RESPONSE_OWNED = HOP_BY_HOP | {b"content-length", b"x-request-id"}

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def _connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    listed: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed.update(token.strip().lower() for token in value.split(b","))
    return frozenset(listed)


def request_id_of(headers: Headers) -> str:
    """The client's X-Request-Id when it is a sane token, else a new random one."""
    for name, value in headers:
        if name == b"x-request-id" and _REQUEST_ID.match(value):
            return value.decode("ascii")
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID


class UpstreamAuth:
    """The upstream key in each dialect's header form; never printed."""

    __slots__ = ("_anthropic", "_openai")

    def __init__(self, api_key: str) -> None:
        self._openai = ("Authorization", f"Bearer {api_key}")
        self._anthropic = ("x-api-key", api_key)

    def header(self, dialect: Dialect) -> tuple[str, str]:
        """The credential header for a dialect."""
        return self._anthropic if dialect == "anthropic" else self._openai

    def __repr__(self) -> str:
        return "UpstreamAuth(key=***)"


def _text(value: bytes) -> str:
    """A header value as aiohttp needs it: it writes strings as UTF-8, so a UTF-8 value
    (``X-Title: café``) is decoded as UTF-8 to arrive unchanged. Other bytes are not
    UTF-8 text and cannot pass unchanged; they are read as latin-1."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def upstream_request_headers(
    client: Headers, dialect: Dialect, auth: UpstreamAuth, request_id: str
) -> list[tuple[str, str]]:
    """Headers for the upstream request, built from the client's."""
    drop = (
        _REQUEST_OWNED | _connection_listed(client)
        if any(name == b"connection" for name, _ in client)
        else _REQUEST_OWNED
    )
    out = [
        (name.decode("latin-1"), _text(value))
        for name, value in client
        if name.lower() not in drop and name != b"x-request-id"
    ]
    out.append(("X-Request-Id", request_id))
    out.append(("Accept-Encoding", "identity"))
    out.append(auth.header(dialect))
    return out


def client_response_headers(
    upstream: Iterable[tuple[bytes, bytes]], request_id: str, *, keep_length: bool
) -> Headers:
    """Headers for the client's response, built from the upstream's."""
    upstream = list(upstream)
    drop = _RESPONSE_OWNED | _connection_listed(upstream)
    out: Headers = []
    for name, value in upstream:
        lower = name.lower()
        if lower not in drop or (lower == b"content-length" and keep_length):
            out.append((lower, value))
        elif lower == b"x-request-id" and value != request_id.encode():
            out.append((b"x-upstream-request-id", value))
    out.append((b"x-request-id", request_id.encode()))
    return out
