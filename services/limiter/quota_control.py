"""Quota pacing wired to the control loop: the poller, the pacer, and the admitted rate
the pacer needs, for the pool of the configured upstream key.

One class, used wherever the control loop runs: the limiter service and, with
``REDIS_URL`` unset, the proxy itself, so that a proxy running alone paces its quota
exactly as ``up`` and the chart do. The first poll is awaited at start (with its timeout),
so pacing has a sample before the first request is admitted.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from zai_proxy.limiter.control import StepResult
from zai_proxy.limiter.quota import QuotaPacer, QuotaSample
from zai_proxy.limiter.quota_poller import QuotaPoller, QuotaStatus
from zai_proxy.limiter.settings import LimiterSettings
from zai_proxy.shared.outcomes import Outcome

log = logging.getLogger("zai_proxy.limiter")


class QuotaControl:
    """Polls the quota endpoint (when enabled) and caps the configured pool's rate."""

    def __init__(self, settings: LimiterSettings) -> None:
        self.pool = settings.pool()
        self.pacer = QuotaPacer(settings.quota_pacing())
        self.poller: QuotaPoller | None = None
        if settings.quota_poll_enabled:
            keys = settings.upstream_keys()
            self.poller = QuotaPoller(
                settings.quota_poller_config(),
                keys[0].key if keys else "",
                on_sample=self._sample,
            )
        # Attempts stepped since the last quota sample: the pacer needs the admitted rate.
        self._attempts = 0.0
        self._attempts_since = time.time()

    async def start(self) -> None:
        """Poll once now (so the first requests are paced), then in the background."""
        if self.poller is None:
            return
        await self.poller.poll_once()
        await self.poller.start(first_after=self.poller.interval)

    async def stop(self) -> None:
        """Stop polling."""
        if self.poller is not None:
            await self.poller.stop()

    def stepped(self, result: StepResult) -> None:
        """Count the attempts a control step saw (the admitted rate between samples)."""
        if result.pool == self.pool:
            self._attempts += sum(result.counts.get(o.value, 0) for o in Outcome)

    def cap(self, pool: str, rate: float) -> float | None:
        """The pacing cap on a pool's rate, or None. The quota belongs to the upstream key:
        only its pool is paced."""
        return self.pacer.cap(time.time()) if pool == self.pool else None

    def status(self) -> QuotaStatus | None:
        """The poller's state, or None when polling is off."""
        return self.poller.status() if self.poller is not None else None

    def state(self) -> dict[str, Any] | None:
        """The quota part of the admin API's state."""
        status = self.status()
        if status is None:
            return None
        return {
            "windows": [
                {
                    "name": w.name,
                    "used_ratio": w.used_ratio,
                    "remaining_ratio": w.remaining_ratio,
                    "reset_at": w.reset_at,
                }
                for w in status.windows
            ],
            "sample_age_seconds": status.sample_age_s,
            "error": status.last_error,
            "rate_cap": self.pacer.cap(time.time()),
        }

    def _sample(self, sample: QuotaSample) -> None:
        elapsed = max(1e-6, sample.at - self._attempts_since)
        self.pacer.observe(sample.at, sample.windows, self._attempts / elapsed)
        self._attempts, self._attempts_since = 0.0, sample.at
