"""Polling the provider's quota endpoint: the I/O half of quota pacing (see `quota`).

The poller asks `GET {origin}/api/monitor/usage/quota/limit` every interval, keeps the
newest windows and when they arrived, and hands each sample to an optional callback (the
limiter feeds it to the `QuotaPacer` with its admitted rate). A failed poll keeps the last
good sample, so its age grows until the pacer calls it stale. Failures are logged once per
change of state (failing for a new reason, recovering), never with the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from zai_proxy.limiter.quota import (
    DEFAULT_POLL_INTERVAL_S,
    QuotaSample,
    QuotaWindow,
    parse_quota,
    quota_error_message,
)

logger = logging.getLogger(__name__)

QUOTA_PATH = "/api/monitor/usage/quota/limit"
DEFAULT_TIMEOUT_S = 10.0  # QUOTA_POLL_TIMEOUT
DEFAULT_AUTH_SCHEME = "Bearer"  # QUOTA_AUTH_SCHEME; "" sends the bare key, as Z.ai's tools do
# A quota answer is a few hundred bytes; anything this big is not one.
MAX_BODY_BYTES = 256 * 1024

Clock = Callable[[], float]
SampleCallback = Callable[[QuotaSample], None]


def quota_url(api_base: str) -> str:
    """The quota endpoint on the origin of an API base URL (`https://api.z.ai/api/paas/v4`)."""
    parts = urlsplit(api_base)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"not an absolute URL: {api_base!r}")
    return f"{parts.scheme}://{parts.netloc}{QUOTA_PATH}"


@dataclass(frozen=True, slots=True)
class QuotaPollerConfig:
    """Where and how often to poll; validated on construction."""

    url: str
    interval_s: float = DEFAULT_POLL_INTERVAL_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    auth_scheme: str = DEFAULT_AUTH_SCHEME

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"the quota URL must be http(s), got {self.url!r}")
        for name in ("interval_s", "timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if any(char.isspace() for char in self.auth_scheme):
            raise ValueError(f"auth_scheme must be one word or empty, got {self.auth_scheme!r}")


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """What the poller knows now, for metrics and the admin API."""

    windows: tuple[QuotaWindow, ...]
    """The newest good sample's windows (empty before the first)."""
    sample_at: float | None
    """Epoch seconds the newest good sample arrived."""
    sample_age_s: float | None
    """Seconds since then."""
    error_kind: str | None
    """Why the latest poll failed: timeout, network, http, api_error, no_windows; None if
    it succeeded. A bounded set, fit for a metric label."""
    last_error: str | None
    """The latest failure in words (no key), None once a poll succeeds again."""
    polls: int
    failures: int


class QuotaPollError(Exception):
    """One poll that brought no usable sample."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class QuotaPoller:
    """Polls the quota endpoint every interval and keeps the newest sample."""

    def __init__(
        self,
        config: QuotaPollerConfig,
        api_key: str,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Clock = time.time,
        on_sample: SampleCallback | None = None,
    ) -> None:
        self._config = config
        self._api_key = api_key
        authorization = f"{config.auth_scheme} {api_key}" if config.auth_scheme else api_key
        self._headers = {
            "Authorization": authorization,
            "Accept": "application/json",
            # Z.ai answers `msg` in Chinese unless asked otherwise.
            "Accept-Language": "en-US,en",
        }
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        self._on_sample = on_sample
        self._task: asyncio.Task[None] | None = None
        self._sample: QuotaSample | None = None
        self._error: QuotaPollError | None = None
        self._logged_state: str | None = None
        self._polls = 0
        self._failures = 0

    @property
    def latest(self) -> QuotaSample | None:
        """The newest good sample, or None before the first."""
        return self._sample

    def status(self) -> QuotaStatus:
        """The newest windows, their age, and the latest failure."""
        sample = self._sample
        error = self._error
        return QuotaStatus(
            windows=sample.windows if sample else (),
            sample_at=sample.at if sample else None,
            sample_age_s=max(0.0, self._clock() - sample.at) if sample else None,
            error_kind=error.kind if error else None,
            last_error=str(error) if error else None,
            polls=self._polls,
            failures=self._failures,
        )

    @property
    def interval(self) -> float:
        """Seconds between polls."""
        return self._config.interval_s

    async def start(self, first_after: float = 0.0) -> None:
        """Start polling in the background, the first poll ``first_after`` seconds from now."""
        if self._task is not None:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self._task = asyncio.create_task(self._run(first_after), name="quota-poller")

    async def stop(self) -> None:
        """Stop polling and close the session if the poller opened it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def poll_once(self) -> QuotaSample | None:
        """Poll now; the new sample, or None when the poll failed (see `status`)."""
        self._polls += 1
        try:
            windows = await self._fetch()
        except QuotaPollError as exc:
            self._failures += 1
            self._error = exc
            self._log_state(exc.kind, str(exc))
            return None
        sample = QuotaSample(self._clock(), tuple(windows))
        self._sample = sample
        self._error = None
        self._log_state(None, ", ".join(window.name for window in windows))
        if self._on_sample is not None:
            try:
                self._on_sample(sample)
            except Exception:
                logger.exception("the quota sample callback failed")
        return sample

    async def _run(self, first_after: float) -> None:
        await asyncio.sleep(first_after)
        while True:
            try:
                await self.poll_once()
            except Exception:
                # A bug in one poll must not end polling: the samples would go stale for good.
                logger.exception("quota poll of %s failed unexpectedly", self._config.url)
            await asyncio.sleep(self._config.interval_s)

    async def _fetch(self) -> list[QuotaWindow]:
        if self._session is None:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        timeout = aiohttp.ClientTimeout(total=self._config.timeout_s)
        try:
            async with self._session.get(
                self._config.url, headers=self._headers, timeout=timeout, allow_redirects=False
            ) as response:
                body = await _read_bounded(response)
                status = response.status
        except TimeoutError as exc:
            raise QuotaPollError("timeout", f"no answer within {self._config.timeout_s} s") from exc
        except aiohttp.ClientError as exc:
            # The exception's text names the host at most; the key lives only in headers.
            raise QuotaPollError("network", f"{type(exc).__name__}: {exc}") from exc
        if status != 200:
            message = quota_error_message(body)
            detail = f"HTTP {status}" + (f": {self._redacted(message)}" if message else "")
            raise QuotaPollError("http", detail)
        windows = parse_quota(body)
        if windows:
            return windows
        message = quota_error_message(body)
        if message is not None:
            raise QuotaPollError("api_error", self._redacted(message))
        raise QuotaPollError("no_windows", "the answer holds no quota windows")

    def _redacted(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _log_state(self, kind: str | None, detail: str) -> None:
        state = kind or "ok"
        if state == self._logged_state:
            return
        previous, self._logged_state = self._logged_state, state
        if kind is not None:
            logger.warning("quota poll of %s failed (%s): %s", self._config.url, kind, detail)
        elif previous is None:
            logger.info("quota poll of %s works; windows: %s", self._config.url, detail or "none")
        else:
            logger.info("quota poll of %s recovered; windows: %s", self._config.url, detail)


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise QuotaPollError("http", f"the answer is larger than {MAX_BODY_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)
