"""The limiter service: the control loop, its admin API and its metrics.

Admin endpoints (``/state``, ``/reset``, ``/bounds``, ``/park``, ``/lift``) need
``Authorization: Bearer <LIMITER_ADMIN_TOKEN>``; with no token configured they answer 403,
so no deployment ever has an open admin API. ``/park`` and ``/lift`` name an upstream key
by its alias (``{"key": "alpha"}``) or a pool (``{"pool": ...}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Response
from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic import BaseModel, Field

from zai_proxy.limiter.control import apply_bounds
from zai_proxy.limiter.metrics import LimiterMetrics
from zai_proxy.limiter.plane import ControlPlane
from zai_proxy.limiter.settings import LimiterSettings
from zai_proxy.limiter.store import FOREVER, PRIORITIES, Flow, LimiterStore, StoreError
from zai_proxy.limiter.stores import open_store
from zai_proxy.shared.exposition import renderer
from zai_proxy.shared.tasks import cancel_and_wait
from zai_proxy.shared.telemetry import Telemetry, telemetry_from_env

log = logging.getLogger("zai_proxy.limiter")

# Seconds between refreshes of the gauges every replica shows from the store.
REFRESH_SECONDS = 1.0


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


class KeyRequest(BaseModel):
    """An upstream key by its alias, or a pool by name (default: the first key's)."""

    key: str | None = Field(default=None, description="The upstream key's alias.")
    pool: str | None = Field(default=None, description="The pool; instead of key.")


class ParkRequest(KeyRequest):
    """Park an upstream key: no request goes to it until then, or until lifted."""

    seconds: float | None = Field(
        default=None, gt=0, description="How long; unset: until lifted (POST /lift)."
    )
    reason: str = Field(default="parked by an operator", min_length=1, max_length=200)


class LimiterService:
    """Owns the store, the control loop and the metrics of one limiter replica."""

    def __init__(
        self,
        settings: LimiterSettings,
        store: LimiterStore | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        """``telemetry``: a span per control step (OTEL_*; None: no tracing)."""
        disable_created_metrics()
        self.settings = settings
        self.params = settings.params()
        self.registry = CollectorRegistry()
        self.metrics = LimiterMetrics(self.registry)
        self.store = store or open_store(
            settings.redis_url, settings.store_config(), socket_timeout=settings.redis_timeout
        )
        self.plane = ControlPlane(
            self.store,
            settings,
            on_step=self.metrics.stepped,
            tracer=telemetry.tracer if telemetry is not None else None,
        )
        self.loop = self.plane.loop
        self.quota = self.plane.quota
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start the control plane (its first quota poll done) and the state refresher."""
        await self.plane.start()
        self._tasks = [asyncio.create_task(self._refresh(), name="limiter-refresh")]

    async def stop(self) -> None:
        """Stop background work and close the store."""
        await self.plane.stop()
        await cancel_and_wait(self._tasks)
        await self.store.close()

    def _show_quota(self) -> None:
        for quota in self.quota.keys:
            key_status = quota.status()
            for window in key_status.windows if key_status is not None else ():
                labels = (quota.pool, quota.alias, window.name)
                self.metrics.key_quota_used.labels(*labels).set(window.used_ratio)
                if window.reset_at is not None:
                    self.metrics.key_quota_reset.labels(*labels).set(window.reset_at)
        status = self.quota.status()
        if status is None:
            return
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
            await asyncio.sleep(REFRESH_SECONDS)

    async def state(self) -> dict[str, Any]:
        """Every active pool's state, as the admin API shows it."""
        pools: dict[str, Any] = {}
        aliases = self.settings.pools()
        names = set(await self.store.pools()) | {self.settings.pool()} | set(aliases)
        for pool in sorted(names):
            saved = await self.store.load_state(pool) or {}
            replicas = await self.store.replicas(pool)
            params = self.loop.params_for(pool, await self.store.load_bounds(pool))
            parking = await self.store.parking(pool)
            flows = await self.store.flows(pool)
            self.metrics.pool_state(pool, saved, params, replicas)
            alias = aliases.get(pool)
            if alias is not None:
                self.metrics.key_parking(pool, alias, parking)
            limit = float(saved["limit"]) if saved.get("limit") else None
            rate = float(saved["rate"]) if saved.get("rate") else params.initial_rate
            cap = saved.get("concurrency")
            pools[pool] = {
                "rate": None if math.isinf(rate) else rate,
                "limited": not math.isinf(rate),
                "ceiling": limit,
                "hold": limit * (1 - params.margin) if limit is not None else None,
                "concurrency_limit": int(cap) if cap else None,
                "probing": saved.get("probing") == "1",
                "paused": saved.get("paused") == "1",
                "last_decision": saved.get("decision", "hold"),
                "concurrency_decision": saved.get("cap_decision", "hold"),
                "tick": int(saved["consumed"]) if saved.get("consumed") else None,
                "updated_at": float(saved["updated_at"]) if saved.get("updated_at") else None,
                "replicas": replicas,
                "key": aliases.get(pool),
                "parked": None
                if parking is None
                else {
                    "until": None if math.isinf(parking.until) else parking.until,
                    "reason": parking.reason,
                    "since": parking.since,
                },
                "clients": [_flow(flow) for flow in flows],
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
            "tick_seconds": self.store.config.tick_seconds,
            "pools": pools,
            "quota": self.quota.state(),
        }

    async def reset(self, pool: str | None) -> str:
        """Forget what a pool learned."""
        name = pool or self.settings.pool()
        await self.store.reset(name)
        log.warning("pool=%s reset by the admin API", name)
        return name

    def pool_of(self, request: KeyRequest) -> str:
        """The pool a request names by key alias or pool; ValueError for an unknown alias."""
        if request.key is not None:
            for pool, alias in self.settings.pools().items():
                if alias == request.key:
                    return pool
            raise ValueError(f"no upstream key has the alias {request.key!r}")
        return request.pool or self.settings.pool()

    async def park(self, request: ParkRequest) -> dict[str, Any]:
        """Park an upstream key's pool (until a time, or until lifted)."""
        pool = self.pool_of(request)
        seconds = request.seconds or FOREVER
        held = await self.store.park(pool, seconds, request.reason)
        log.warning("pool=%s parked by the admin API: %s", pool, request.reason)
        until = None if math.isinf(held.until) else held.until
        return {"pool": pool, "until": until, "reason": held.reason}

    async def lift(self, request: KeyRequest) -> dict[str, Any]:
        """End an upstream key's parking now."""
        pool = self.pool_of(request)
        lifted = await self.store.lift(pool)
        if lifted:
            log.warning("pool=%s parking lifted by the admin API", pool)
        return {"pool": pool, "lifted": lifted}

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


def _flow(flow: Flow) -> dict[str, Any]:
    # A rank the store cannot name (written by a newer proxy) shows as its number.
    rank = PRIORITIES[flow.rank] if 0 <= flow.rank < len(PRIORITIES) else str(flow.rank)
    return {
        "client": flow.client,
        "class": rank,
        "weight": flow.weight,
        "held": flow.held,
        "waiting": flow.waiting,
    }


def build_app(settings: LimiterSettings, store: LimiterStore | None = None) -> FastAPI:
    """The limiter's HTTP application."""
    telemetry = telemetry_from_env("zai-limiter")
    service = LimiterService(settings, store, telemetry)
    token = settings.limiter_admin_token.get_secret_value()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()
        if telemetry is not None:
            await asyncio.to_thread(telemetry.shutdown)

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
        """Every pool: rate, learned limit, hold line, cap, probing, last decision, replicas,
        and its clients' flows now (leases held, requests waiting)."""
        try:
            return await service.state()
        except StoreError as exc:
            raise HTTPException(503, f"limiter store unreachable: {exc}") from exc

    @app.post("/reset", dependencies=guarded)
    async def reset(request: ResetRequest | None = None) -> dict[str, str]:
        """Forget a pool's learned state; it starts again with slow start."""
        return {"reset": await service.reset(request.pool if request else None)}

    @app.post("/park", dependencies=guarded)
    async def park(request: ParkRequest) -> dict[str, Any]:
        """Park an upstream key (by alias, or a pool): no proxy sends it work until then."""
        try:
            return await service.park(request)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc

    @app.post("/lift", dependencies=guarded)
    async def lift(request: KeyRequest | None = None) -> dict[str, Any]:
        """Lift an upstream key's parking (a quota reset early, arrears paid, plan renewed)."""
        try:
            return await service.lift(request or KeyRequest())
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc

    @app.put("/bounds", dependencies=guarded)
    async def bounds(request: Bounds) -> dict[str, str]:
        """Set a pool's rate and concurrency bounds (kept in the store, for every replica)."""
        try:
            return await service.set_bounds(request)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc

    return app
