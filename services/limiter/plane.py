"""The control plane as one part: the control loop with quota pacing, started and stopped
together. The limiter service runs it; so does a proxy with ``REDIS_URL`` unset, so the
same law, pacing and first quota poll apply however the proxy is started."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from zai_proxy.limiter.control import ControlLoop, StepResult
from zai_proxy.limiter.quota_control import QuotaControl
from zai_proxy.limiter.settings import LimiterSettings
from zai_proxy.limiter.store import LimiterStore, StoreError
from zai_proxy.shared.tasks import cancel_and_wait

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer


class ControlPlane:
    """The control loop and the quota control over one store."""

    def __init__(
        self,
        store: LimiterStore,
        settings: LimiterSettings,
        on_step: Callable[[StepResult], None] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.quota = QuotaControl(settings, store)
        self._on_step = on_step
        paced = settings.quota_poll_enabled and settings.quota_pacing_enabled
        self.loop = ControlLoop(
            store,
            settings.params(),
            state_max_age=settings.rate_limit_state_max_age,
            rate_cap=self.quota.cap,
            on_step=self._stepped,
            pools=self.quota.pools if paced else (),
            tracer=tracer,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Poll the quota once and step once (so the first requests are paced), then run
        the loop."""
        await self.quota.start()
        # The first step puts the quota's cap in force before anything is admitted: the
        # loop's own first one may come after the first requests. A store that cannot be
        # reached now is the loop's to retry.
        with contextlib.suppress(StoreError):
            await self.loop.tick()
        self._task = asyncio.create_task(self.loop.run(), name="limiter-control")

    async def stop(self) -> None:
        """Stop the loop and the poller."""
        await self.quota.stop()
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    def _stepped(self, result: StepResult) -> None:
        self.quota.stepped(result)
        if self._on_step is not None:
            self._on_step(result)
