"""The limiter service: the control loop, its admin API and its metrics.

Admin endpoints (``/state``, ``/reset``, ``/bounds``) need ``Authorization: Bearer
<LIMITER_ADMIN_TOKEN>``; with no token configured they answer 403, so no deployment ever
has an open admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Response
from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic import BaseModel, Field

from zai_proxy.limiter.control import ControlLoop, StepResult, apply_bounds
from zai_proxy.limiter.metrics import LimiterMetrics
from zai_proxy.limiter.quota import QuotaPacer, QuotaSample
from zai_proxy.limiter.quota_poller import QuotaPoller
from zai_proxy.limiter.settings import LimiterSettings
from zai_proxy.limiter.store import LimiterStore, StoreError
from zai_proxy.limiter.stores import open_store
from zai_proxy.shared.exposition import renderer
from zai_proxy.shared.tasks import cancel_and_wait

log = logging.getLogger("zai_proxy.limiter")


class Bounds(BaseModel):
    """New bounds for a pool; fields left out keep their value."""

    pool: str | None = Field(default=None, description="The pool; default: the configured one.")
    min_rate: float | None = Field(default=None, gt=0)
    max_rate: float | None = Field(default=None, gt=0)
    min_concurrency: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)


class ResetRequest(BaseModel):
    """Which pool to reset."""

    pool: str | None = Field(default=None, description="The pool; default: the configured one.")


class LimiterService:
    """Owns the store, the control loop and the metrics of one limiter replica."""

    def __init__(self, settings: LimiterSettings, store: LimiterStore | None = None) -> None:
        disable_created_metrics()
        self.settings = settings
        self.params = settings.params()
        self.registry = CollectorRegistry()
        self.metrics = LimiterMetrics(self.registry)
        self.store = store or open_store(
            settings.redis_url, settings.store_config(), socket_timeout=settings.redis_timeout
        )
        self.pacer = QuotaPacer(settings.quota_pacing())
        self.poller: QuotaPoller | None = None
        if settings.quota_poll_enabled:
            self.poller = QuotaPoller(
                settings.quota_poller_config(),
                settings.zai_api_key.get_secret_value(),
                on_sample=self._quota_sample,
            )
        self.loop = ControlLoop(
            self.store,
            self.params,
            state_max_age=settings.rate_limit_state_max_age,
            rate_cap=self._quota_cap,
            on_step=self._stepped,
        )
        self._tasks: list[asyncio.Task[None]] = []
        # Attempts stepped since the last quota sample: the pacer needs the admitted rate.
        self._attempts = 0
        self._attempts_since = time.time()

    async def start(self) -> None:
        """Start the control loop, the state refresher and the quota poller."""
        self._tasks = [
            asyncio.create_task(self.loop.run(), name="limiter-control"),
            asyncio.create_task(self._refresh(), name="limiter-refresh"),
        ]
        if self.poller is not None:
            await self.poller.start()

    async def stop(self) -> None:
        """Stop background work and close the store."""
        if self.poller is not None:
            await self.poller.stop()
        await cancel_and_wait(self._tasks)
        await self.store.close()

    def _stepped(self, result: StepResult) -> None:
        self.metrics.stepped(result)
        if result.pool == self.settings.pool():
            self._attempts += sum(
                v for k, v in result.counts.items() if k not in ("demand", "peak_concurrency")
            )

    def _quota_sample(self, sample: QuotaSample) -> None:
        elapsed = max(1e-6, sample.at - self._attempts_since)
        self.pacer.observe(sample.at, sample.windows, self._attempts / elapsed)
        self._attempts, self._attempts_since = 0, sample.at

    def _quota_cap(self, pool: str, rate: float) -> float | None:
        # The quota belongs to the upstream key: only the configured pool is paced.
        return self.pacer.cap(time.time()) if pool == self.settings.pool() else None

    def _show_quota(self) -> None:
        if self.poller is None:
            return
        status = self.poller.status()
        for window in status.windows:
            self.metrics.quota_used.labels(window.name).set(window.used_ratio)
            self.metrics.quota_remaining.labels(window.name).set(window.remaining_ratio)
            if window.reset_at is not None:
                self.metrics.quota_reset.labels(window.name).set(window.reset_at)
        if status.sample_age_s is not None:
            self.metrics.quota_age.set(status.sample_age_s)

    async def _refresh(self) -> None:
        # Every replica (not only the leader) shows the pools' state from the store.
        while True:
            self._show_quota()
            try:
                await self.state()
            except StoreError:
                self.metrics.store_up.set(0)
            await asyncio.sleep(self.store.config.window_seconds / 2)

    async def state(self) -> dict[str, Any]:
        """Every active pool's state, as the admin API shows it."""
        pools: dict[str, Any] = {}
        names = set(await self.store.pools()) | {self.settings.pool()}
        for pool in sorted(names):
            saved = await self.store.load_state(pool) or {}
            replicas = await self.store.replicas(pool)
            params = self.loop.params_for(pool, await self.store.load_bounds(pool))
            self.metrics.pool_state(pool, saved, params, replicas)
            ceiling = float(saved["ceiling"]) if saved.get("ceiling") else None
            pools[pool] = {
                "rate": float(saved.get("rate", params.initial_rate)),
                "ceiling": ceiling,
                "hold": ceiling * (1 - params.hold_margin) if ceiling is not None else None,
                "concurrency_limit": int(saved.get("concurrency", params.max_concurrency)),
                "clean_windows": int(saved.get("clean_windows", 0)),
                "probing": saved.get("probing") == "True",
                "last_decision": saved.get("last_decision", "hold"),
                "window": int(saved["window"]) if saved.get("window") else None,
                "updated_at": float(saved["updated_at"]) if saved.get("updated_at") else None,
                "replicas": replicas,
                "bounds": {
                    "min_rate": params.min_rate,
                    "max_rate": params.max_rate,
                    "min_concurrency": params.min_concurrency,
                    "max_concurrency": params.max_concurrency,
                },
            }
        self.metrics.store_up.set(1)
        self.metrics.leader.set(1 if self.loop.leader else 0)
        return {
            "node": self.loop.node,
            "leader": self.loop.leader,
            "degraded": not self.loop.healthy,
            "window_seconds": self.store.config.window_seconds,
            "pools": pools,
            "quota": self._quota_state(),
        }

    def _quota_state(self) -> dict[str, Any] | None:
        if self.poller is None:
            return None
        status = self.poller.status()
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

    async def reset(self, pool: str | None) -> str:
        """Forget what a pool learned."""
        name = pool or self.settings.pool()
        await self.store.reset(name)
        log.warning("pool=%s reset by the admin API", name)
        return name

    async def set_bounds(self, bounds: Bounds) -> dict[str, str]:
        """Save new bounds for a pool; the next step applies them."""
        name = bounds.pool or self.settings.pool()
        updates = {
            field: str(value)
            for field, value in bounds.model_dump(exclude={"pool"}).items()
            if value is not None
        }
        merged = {**await self.store.load_bounds(name), **updates}
        apply_bounds(self.params, merged)  # ValueError when min exceeds max
        await self.store.save_bounds(name, merged)
        log.warning("pool=%s bounds set by the admin API: %s", name, updates)
        return {"pool": name, **merged}


def build_app(settings: LimiterSettings, store: LimiterStore | None = None) -> FastAPI:
    """The limiter's HTTP application."""
    service = LimiterService(settings, store)
    token = settings.limiter_admin_token.get_secret_value()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="zai-proxy limiter", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    Instrumentator(registry=service.registry).instrument(app)
    render = renderer(service.registry)

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        if not token:
            raise HTTPException(403, "the admin API is off: set LIMITER_ADMIN_TOKEN")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a valid admin token is required")

    guarded = [Depends(admin)]

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process is serving; "degraded" while the store is unreachable."""
        return {"status": "ok" if service.loop.healthy else "degraded"}

    @app.get("/ready")
    async def ready(response: Response) -> dict[str, str]:
        """Readiness: the store answers."""
        try:
            await service.store.ping()
        except StoreError:
            response.status_code = 503
            return {"status": "store unreachable"}
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus exposition."""
        body, content_type = render()
        return Response(body, media_type=content_type)

    @app.get("/state", dependencies=guarded)
    async def state() -> dict[str, Any]:
        """Every pool: rate, ceiling, hold line, clean windows, last decision, replicas."""
        try:
            return await service.state()
        except StoreError as exc:
            raise HTTPException(503, f"limiter store unreachable: {exc}") from exc

    @app.post("/reset", dependencies=guarded)
    async def reset(request: ResetRequest | None = None) -> dict[str, str]:
        """Forget a pool's learned state; it starts again from RATE_LIMIT_INITIAL."""
        return {"reset": await service.reset(request.pool if request else None)}

    @app.put("/bounds", dependencies=guarded)
    async def bounds(request: Bounds) -> dict[str, str]:
        """Set a pool's rate and concurrency bounds (kept in the store, for every replica)."""
        try:
            return await service.set_bounds(request)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc

    return app
