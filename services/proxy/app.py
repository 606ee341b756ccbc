"""The proxy's ASGI application: its own endpoints on FastAPI, every other path forwarded.

``/health``, ``/ready`` and ``/metrics`` belong to the proxy; every other request goes
straight to the Forwarder, without a framework's routing and middleware on the hot path
(the benchmark in bench/proxy_bench.py measured what that costs).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CollectorRegistry, disable_created_metrics, multiprocess
from prometheus_fastapi_instrumentator import Instrumentator

from zai_proxy.proxy.accounting import Accounting
from zai_proxy.proxy.admission import WorkerPool
from zai_proxy.proxy.forwarding import Forwarder
from zai_proxy.proxy.headers import UpstreamAuth
from zai_proxy.proxy.metrics import ProxyMetrics, renderer
from zai_proxy.proxy.routing import Router
from zai_proxy.proxy.settings import ProxySettings
from zai_proxy.proxy.tokens import TokenEstimator, encoding_for, load_encoding
from zai_proxy.proxy.upstream import create_session

log = logging.getLogger("zai_proxy.proxy")

CONTROL_PATHS = frozenset({"/health", "/ready", "/metrics"})


@dataclass(slots=True)
class Lifecycle:
    """Process state the server and the endpoints share: set draining on SIGTERM."""

    draining: bool = False


class ProxyApp:
    """The proxy's ASGI application."""

    def __init__(self, settings: ProxySettings) -> None:
        # `_created` samples double the exposition and no dashboard reads them.
        disable_created_metrics()
        self.settings = settings
        self.lifecycle = Lifecycle()
        self.registry = CollectorRegistry()
        self.metrics = ProxyMetrics(
            settings.deployment_variant, settings.metrics_max_models, self.registry
        )
        self.metrics.workers.set(settings.max_workers)
        self.control = self._control_app()
        self.forwarder: Forwarder | None = None

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
        # websocket and other scope types are not served; returning closes them.

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
        """Open the upstream pool and load the tokenizer (from the installed wheel)."""
        s = self.settings
        estimator = None
        if s.token_counting_enabled:
            estimator = TokenEstimator(load_encoding(encoding_for(s.tokenizer_model)))
        self.forwarder = Forwarder(
            router=Router(s.zai_target_url, s.zai_anthropic_url),
            auth=UpstreamAuth(s.zai_api_key.get_secret_value()),
            session=create_session(s),
            pool=WorkerPool(s.max_workers, s.max_queue, s.queue_timeout),
            metrics=self.metrics,
            accounting=Accounting(estimator),
            max_body=s.max_request_body_bytes,
            log_requests=s.access_log,
        )

    async def shutdown(self) -> None:
        """Close upstream connections; in multiprocess mode retire this process's gauges."""
        if self.forwarder is not None:
            await self.forwarder.session.close()
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
            """Liveness: the process is serving."""
            return {"status": "ok"}

        @app.get("/ready")
        async def ready(response: Response) -> dict[str, str]:
            """Readiness: not draining and the limiter store is reachable."""
            if lifecycle.draining:
                response.status_code = 503
                return {"status": "draining"}
            return {"status": "ready"}

        @app.get("/metrics")
        async def metrics() -> Response:
            """Prometheus exposition (all worker processes merged in multiprocess mode)."""
            body, content_type = render()
            return Response(body, media_type=content_type)

        return app


def create_app(settings: ProxySettings | None = None) -> ProxyApp:
    """Build the proxy application (settings from the environment when not given)."""
    return ProxyApp(settings or ProxySettings())
