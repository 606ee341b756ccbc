"""The pooled upstream HTTP client, and the translation of its errors at the edge.

aiohttp was chosen over httpx by benchmark (docs/performance.md): one keep-alive
connection pool per process, sized from MAX_WORKERS. Bodies go through byte for byte:
no automatic decompression, no cookie jar shared between clients, no default headers
beyond what the client sent, no redirects followed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from yarl import URL

from zai_proxy.proxy.errors import ProxyError, UpstreamTimeout, UpstreamUnavailable
from zai_proxy.proxy.settings import ProxySettings

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
