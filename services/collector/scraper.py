"""Fetching and parsing the expositions of many targets at once, each within a deadline.

A failed scrape is a ``ScrapeResult`` with a reason from a small fixed set (see
``metrics.SCRAPE_ERROR_REASONS``) and a detail for the log, never an exception: one
target's trouble must not cost the round the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from zai_proxy.collector.merge import Scrape
from zai_proxy.collector.targets import ScrapeTarget

# An exposition larger than this is refused (a proxy's is tens of kilobytes): the
# collector's memory must not depend on what a target sends.
MAX_EXPOSITION_BYTES = 8 * 1024 * 1024
ACCEPT = "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"
# Connections opened at once; more targets wait for a free one.
MAX_CONNECTIONS = 100


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    """One target's scrape: parsed, or failed with a reason (and a detail for the log)."""

    target: ScrapeTarget
    duration: float  # seconds
    scrape: Scrape | None = None
    reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the target answered with an exposition that parsed."""
        return self.scrape is not None


class _Failed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def create_session(metrics_token: str = "") -> aiohttp.ClientSession:
    """The HTTP client the scraper uses (the caller closes it); with the targets' token."""
    headers = {"Accept": ACCEPT}
    if metrics_token:
        headers["Authorization"] = f"Bearer {metrics_token}"
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
        headers=headers,
        # Every target gets the same session: no cookie of one may reach another.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class Scraper:
    """Scrapes targets concurrently over one HTTP session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        max_bytes: int = MAX_EXPOSITION_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.max_bytes = max_bytes
        self.clock = clock

    async def scrape_all(
        self, targets: Iterable[ScrapeTarget], time_limit: float
    ) -> list[ScrapeResult]:
        """Every target's result, in the order given; each scrape ends within ``time_limit``."""
        return list(await asyncio.gather(*(self.scrape(t, time_limit) for t in targets)))

    async def scrape(self, target: ScrapeTarget, time_limit: float) -> ScrapeResult:
        """One target's exposition, fetched and parsed."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(time_limit):
                text = await self._fetch(target.url)
            # Read at the moment the body arrived: rates divide by scrape times.
            scrape = Scrape.parse(target.url, self.clock(), text)
        except _Failed as exc:
            return ScrapeResult(target, time.monotonic() - started, None, exc.reason, str(exc))
        except TimeoutError:
            return ScrapeResult(
                target,
                time.monotonic() - started,
                None,
                "timeout",
                f"no answer in {time_limit:g} s",
            )
        except (aiohttp.ClientError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            return ScrapeResult(target, time.monotonic() - started, None, "connection", detail)
        except ValueError as exc:
            return ScrapeResult(target, time.monotonic() - started, None, "parse", str(exc))
        return ScrapeResult(target, time.monotonic() - started, scrape)

    async def _fetch(self, url: str) -> str:
        async with self.session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise _Failed("status", f"HTTP {response.status}")
            if (response.content_length or 0) > self.max_bytes:
                raise _Failed("too_large", f"{response.content_length} bytes")
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > self.max_bytes:
                    raise _Failed("too_large", f"over {self.max_bytes} bytes")
        return body.decode("utf-8", errors="replace")
