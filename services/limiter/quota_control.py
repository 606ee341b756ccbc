"""Quota pacing wired to the control loop: per upstream key, the poller, the pacer, and
the admitted rate the pacer needs, for that key's pool.

One class, used wherever the control loop runs: the limiter service and, with
``REDIS_URL`` unset, the proxy itself, so that a proxy running alone paces its quota
exactly as ``up`` and the chart do. The first poll of every key is awaited at start
(with its timeout), so pacing has a sample before the first request is admitted.

Each key's quota is its own (``ZAI_API_KEYS``: a plan each), so each key is polled with
its own credentials and paced in its own pool. A poll that shows a parked key usable again
(every window it reports has quota left) lifts the parking: a spent quota that was reset
early, or arrears that were paid. The first key's figures are also the service's
unlabelled quota figures (``status``, ``state``), as they were with one key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from zai_proxy.limiter.control import StepResult
from zai_proxy.limiter.quota import QuotaPacer, QuotaSample
from zai_proxy.limiter.quota_poller import QuotaPoller, QuotaStatus
from zai_proxy.limiter.settings import LimiterSettings
from zai_proxy.limiter.store import LimiterStore, StoreError
from zai_proxy.shared.outcomes import Outcome
from zai_proxy.shared.upstream_keys import DEFAULT_ALIAS

log = logging.getLogger("zai_proxy.limiter")


@dataclass(slots=True)
class KeyQuota:
    """One upstream key's quota: its poller (when polling is on) and its pacer."""

    alias: str
    pool: str
    pacer: QuotaPacer
    poller: QuotaPoller | None = None
    # Attempts stepped since the last quota sample: the pacer needs the admitted rate.
    attempts: float = 0.0
    attempts_since: float = field(default_factory=time.time)

    def sample(self, sample: QuotaSample) -> None:
        elapsed = max(1e-6, sample.at - self.attempts_since)
        self.pacer.observe(sample.at, sample.windows, self.attempts / elapsed)
        self.attempts, self.attempts_since = 0.0, sample.at

    def status(self) -> QuotaStatus | None:
        return self.poller.status() if self.poller is not None else None


class QuotaControl:
    """Polls each upstream key's quota endpoint (when enabled) and caps its pool's rate."""

    def __init__(self, settings: LimiterSettings, store: LimiterStore | None = None) -> None:
        self._store = store
        self._lifts: set[asyncio.Task[None]] = set()
        keys = settings.upstream_keys()
        entries = [(k.alias, k.pool, k.key) for k in keys] or [(DEFAULT_ALIAS, settings.pool(), "")]
        self.keys: list[KeyQuota] = []
        for alias, pool, key in entries:
            quota = KeyQuota(alias, pool, QuotaPacer(settings.quota_pacing()))
            if settings.quota_poll_enabled:
                quota.poller = QuotaPoller(
                    settings.quota_poller_config(), key, on_sample=self._on_sample(quota)
                )
            self.keys.append(quota)
        self._by_pool = {quota.pool: quota for quota in self.keys}
        first = self.keys[0]
        self.pool, self.pacer, self.poller = first.pool, first.pacer, first.poller

    @property
    def pools(self) -> Sequence[str]:
        """Every key's pool."""
        return [quota.pool for quota in self.keys]

    async def start(self) -> None:
        """Poll every key once now (so the first requests are paced), then in the
        background."""
        pollers = [quota.poller for quota in self.keys if quota.poller is not None]
        await asyncio.gather(*(poller.poll_once() for poller in pollers))
        for poller in pollers:
            await poller.start(first_after=poller.interval)

    async def stop(self) -> None:
        """Stop polling."""
        for quota in self.keys:
            if quota.poller is not None:
                await quota.poller.stop()
        for task in list(self._lifts):
            task.cancel()

    def stepped(self, result: StepResult) -> None:
        """Count the attempts a control step saw (the admitted rate between samples)."""
        quota = self._by_pool.get(result.pool)
        if quota is not None:
            quota.attempts += sum(result.counts.get(o.value, 0) for o in Outcome)

    def cap(self, pool: str, rate: float) -> float | None:
        """The pacing cap on a pool's rate, or None. A quota belongs to its upstream key:
        each key's pool is paced by its own quota."""
        quota = self._by_pool.get(pool)
        return quota.pacer.cap(time.time()) if quota is not None else None

    def status(self) -> QuotaStatus | None:
        """The first key's poller state, or None when polling is off."""
        return self.keys[0].status()

    def state(self) -> dict[str, Any] | None:
        """The quota part of the admin API's state (the first key's; every key's under
        ``keys``)."""
        if self.keys[0].poller is None:
            return None
        keys = {quota.alias: self._state_of(quota) for quota in self.keys}
        return {**self._state_of(self.keys[0]), "keys": keys}

    def _state_of(self, quota: KeyQuota) -> dict[str, Any]:
        status = quota.status()
        assert status is not None
        return {
            "pool": quota.pool,
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
            "rate_cap": quota.pacer.cap(time.time()),
        }

    def _on_sample(self, quota: KeyQuota) -> Any:
        def handle(sample: QuotaSample) -> None:
            quota.sample(sample)
            paced = [window for window in sample.windows if window.paced]
            usable = bool(paced) and all(window.used_ratio < 1 for window in paced)
            if usable and self._store is not None:
                task = asyncio.get_running_loop().create_task(self._lift(quota))
                self._lifts.add(task)
                task.add_done_callback(self._lifts.discard)

        return handle

    async def _lift(self, quota: KeyQuota) -> None:
        assert self._store is not None
        try:
            if await self._store.lift(quota.pool):
                log.warning("key=%s parking lifted: its quota poll shows it usable", quota.alias)
        except StoreError as exc:
            log.warning("key=%s parking not lifted (store unreachable: %s)", quota.alias, exc)
