"""The collector's HTTP side: its health, its targets and its own metrics.

Migrations are not run here: ``zai-proxy collector`` runs them before it serves, so that a
database that cannot be migrated stops the process with one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_fastapi_instrumentator import Instrumentator

from zai_proxy.collector.service import CollectorService
from zai_proxy.collector.settings import CollectorSettings
from zai_proxy.collector.store import SnapshotStore
from zai_proxy.collector.targets import Resolve, system_resolver
from zai_proxy.shared.telemetry import telemetry_from_env


def build_app(
    settings: CollectorSettings,
    *,
    store: SnapshotStore | None = None,
    resolve: Resolve = system_resolver,
) -> FastAPI:
    """The collector's application; its lifespan runs the collector."""
    # `_created` samples double the exposition and no dashboard reads them.
    disable_created_metrics()
    telemetry = telemetry_from_env("zai-collector")
    service = CollectorService(
        settings,
        store=store,
        resolve=resolve,
        tracer=telemetry.tracer if telemetry is not None else None,
    )
    # Resident memory and start time: the previous collector died of running out of memory.
    ProcessCollector(registry=service.registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()
        if telemetry is not None:
            await asyncio.to_thread(telemetry.shutdown)

    app = FastAPI(title="zai-proxy collector", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    Instrumentator(registry=service.registry).instrument(app)

    @app.get("/health")
    async def health(response: Response) -> dict[str, str]:
        """Liveness: rounds keep completing; "degraded" while the database is away."""
        if not service.healthy():
            response.status_code = 503
            return {"status": "stalled"}
        return {"status": "ok" if service.database_ok else "degraded"}

    @app.get("/ready")
    async def ready(response: Response) -> dict[str, str]:
        """Readiness: a first round has completed."""
        if not service.ready():
            response.status_code = 503
            return {"status": "starting"}
        return {"status": "ready"}

    @app.get("/targets")
    async def targets() -> dict[str, Any]:
        """Every target of the last round: up or down, why, and when it last answered."""
        return {
            "rounds": service.rounds,
            "buffered": service.writer.pending,
            "database_ok": service.database_ok,
            "targets": [asdict(state) for state in service.targets.values()],
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus exposition of the collector itself."""
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    return app
