"""The pooled upstream HTTP client, and the translation of its errors at the edge.

aiohttp was chosen over httpx by benchmark (docs/performance.md): one keep-alive
connection pool per process, sized from MAX_WORKERS. Bodies go through byte for byte:
no automatic decompression, no cookie jar shared between clients, no default headers
beyond what the client sent, no redirects followed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from zai_proxy.proxy.errors import ProxyError, UpstreamTimeout, UpstreamUnavailable
from zai_proxy.proxy.settings import ProxySettings

log = logging.getLogger("zai_proxy.proxy")

# At most one warning per failure class and upstream host in this many seconds.
FAILURE_LOG_SECONDS = 60.0

# Keep-alive connections live shorter than typical upstream idle timeouts (60 s+), so a
# pooled connection is rarely closed by the far end just as it is reused.
KEEPALIVE_SECONDS = 30.0


def create_session(settings: ProxySettings) -> aiohttp.ClientSession:
    """One client session per process; call from a running event loop."""
    connector = aiohttp.TCPConnector(
        limit=settings.max_workers,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_SECONDS,
        ttl_dns_cache=60,
    )
    timeout = aiohttp.ClientTimeout(
        total=settings.upstream_total_timeout,
        sock_connect=settings.upstream_connect_timeout,
        sock_read=settings.upstream_read_timeout,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        read_bufsize=1 << 16,
    )


def translate(exc: BaseException) -> ProxyError:
    """Map a client library error onto the proxy's own error."""
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout("the upstream did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable("the upstream refused or could not open a connection")
    return UpstreamUnavailable("the upstream connection broke off")


UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


@asynccontextmanager
async def open_response(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes | bytearray,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Send a request and yield the response once its headers are in."""
    try:
        response = await session.request(
            method,
            URL(url, encoded=True),
            headers=headers,
            data=body or None,
            allow_redirects=False,
        )
    except UPSTREAM_ERRORS as exc:
        raise translate(exc) from exc
    try:
        yield response
    except BaseException:
        # Half-read or abandoned: the connection cannot go back to the pool.
        response.close()
        raise
    response.release()


def failure_class(err: ProxyError) -> str:
    """How an upstream attempt failed, as the failure log names it."""
    if isinstance(err, UpstreamTimeout):
        return "timeout"
    if isinstance(err.__cause__, aiohttp.ClientConnectorError):
        return "cannot connect"
    return "connection broke off"


class UpstreamFailureLog:
    """Says in the log that an upstream cannot be reached, without a line per request.

    The first failure of a class (cannot connect, timeout, broke off) at a host is logged
    with the library's own error; the next ones within ``interval`` seconds are counted
    and reported with the next warning. Metrics count every one.
    """

    def __init__(
        self, interval: float = FAILURE_LOG_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._unlogged: dict[tuple[str, str], int] = {}

    def failed(self, url: str, err: ProxyError) -> None:
        """Note one failed attempt at ``url``; log it unless its kind was logged lately."""
        key = (urlsplit(url).netloc, failure_class(err))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
            return
        self._last[key] = now
        unlogged = self._unlogged.pop(key, 0)
        cause = err.__cause__
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else err.message
        log.warning(
            "upstream %s: %s (%s)%s",
            key[0],
            key[1],
            detail,
            f"; {unlogged} more since the last warning" if unlogged else "",
        )
