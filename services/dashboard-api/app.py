"""The dashboard's HTTP application: REST history, the SSE live stream, the built web UI.

The contract with the web UI is ``docs/dashboard-api.md``. Migrations are not run here:
``zai-proxy dashboard`` runs them before it serves, as the collector does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import HTMLResponse, Response

from zai_proxy import __version__
from zai_proxy.collector.history import ALL_VARIANTS, SnapshotHistory, StorageError
from zai_proxy.dashboard_api.auth import TokenGuard
from zai_proxy.dashboard_api.events import (
    HEARTBEAT,
    REPLAY_SECONDS,
    Broadcaster,
    DroppedClientFilter,
    EventStream,
    TooManyClients,
    client_span,
    stream,
)
from zai_proxy.dashboard_api.limiter import LimiterClient
from zai_proxy.dashboard_api.points import (
    ConfigAnswer,
    Health,
    LimiterAnswer,
    MetricsAnswer,
    Problem,
    StatusAnswer,
)
from zai_proxy.dashboard_api.queries import RANGES, VARIANT_PATTERN, HistoryReader, RangeName
from zai_proxy.dashboard_api.settings import DashboardSettings
from zai_proxy.dashboard_api.webui import UNAUTHORIZED, WebUI
from zai_proxy.shared.telemetry import telemetry_from_env

EVENT_ID_PATTERN = r"^[0-9]{1,15}$"  # whole milliseconds since the epoch
RETRY_AFTER_SECONDS = 5  # told to a client refused for lack of SSE slots
LOCATIONS = {"query": "query parameter", "header": "header", "path": "path parameter"}
MAX_ECHO = 80  # characters of a bad value repeated in its error message


class JSON(Response):
    """A JSON answer encoded by orjson (NaN and infinities become null)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSON:
    """An error answer: ``{"detail": "..."}``."""
    return JSON({"detail": detail}, status, headers=headers)


def validation_detail(errors: Sequence[Any]) -> str:
    """One readable sentence per bad parameter."""
    parts = []
    for error in errors:
        location = error.get("loc") or ("request",)
        kind = LOCATIONS.get(str(location[0]), str(location[0]))
        name = ".".join(str(part) for part in location[1:])
        text = f"{kind} {name!r}: {error.get('msg', 'invalid')}"
        if isinstance(error.get("input"), str | int | float):
            given = repr(error["input"])
            text += f" (got {given[:MAX_ECHO]}{'...' if len(given) > MAX_ECHO else ''})"
        parts.append(text)
    return "; ".join(parts) or "invalid request"


def _errors(status: int, *, description: str) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Problem, "description": description}}


def build_app(
    settings: DashboardSettings,
    *,
    history: SnapshotHistory | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The dashboard's application; its lifespan runs the broadcaster, then closes the reader."""
    _install_log_filter()
    telemetry = telemetry_from_env("zai-dashboard")
    tracer = telemetry.tracer if telemetry is not None else None
    guard = TokenGuard(settings.token())
    ui = WebUI(settings.static_dir())
    limiter = LimiterClient(settings.limiter_url, settings.limiter_admin_token.get_secret_value())
    owned = history is None
    history = history or SnapshotHistory.open(settings.database_url, retention=settings.retention())
    reader = HistoryReader(history)
    broadcaster = Broadcaster(
        reader,
        poll_interval=settings.dashboard_poll_interval,
        backlog=settings.dashboard_sse_backlog,
        max_clients=settings.dashboard_max_sse_clients,
        clock=clock,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await broadcaster.start()
        try:
            yield
        finally:
            await broadcaster.stop()
            await limiter.close()
            if owned:
                await history.close()
            if telemetry is not None:
                await asyncio.to_thread(telemetry.shutdown)

    app = FastAPI(
        title="zai-proxy dashboard",
        version=__version__,
        description="History, live stream and limiter state for the dashboard's web UI.",
        lifespan=lifespan,
        openapi_url=None,  # served below, behind the token
        docs_url=None,
        redoc_url=None,
    )
    app.state.broadcaster = broadcaster
    app.state.reader = reader

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> Response:
        return problem(400, validation_detail(exc.errors()))

    @app.exception_handler(StorageError)
    async def storage_down(_request: Request, exc: StorageError) -> Response:
        return problem(503, f"the rollup database cannot be read: {exc}")

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness; never needs the token."""
        return {"status": "ok"}

    guarded = [guard.dependency()] if guard.enabled else []
    refusals = _errors(401, description="No valid token.") if guard.enabled else {}
    unreadable = _errors(503, description="The rollup database cannot be read.")
    api = APIRouter(prefix="/api", dependencies=guarded, responses=refusals)

    @api.get(
        "/metrics",
        response_model=MetricsAnswer,
        responses={**_errors(400, description="Bad parameters."), **unreadable},
    )
    async def metrics(
        span: Annotated[
            RangeName, Query(alias="range", description="How far back from now.")
        ] = "1h",
        variant: Annotated[
            str,
            Query(
                pattern=VARIANT_PATTERN,
                description="A variant, or `all`. A variant with no rows answers no points.",
            ),
        ] = ALL_VARIANTS,
    ) -> Response:
        """Points per variant over a range, at most about 300 each, at the range's resolution."""
        now = clock()
        found = await reader.series(RANGES[span], variant, now)
        return JSON(
            {
                "range": span,
                "variant": variant,
                "start": found.start,
                "end": found.end,
                "step": found.step,
                "series": found.series,
                "summary": found.summary,
                "clients": found.clients,
            }
        )

    @api.get("/status", response_model=StatusAnswer, responses=unreadable)
    async def status() -> Response:
        """The newest point of every variant, how old it is, and whether it is stale."""
        now = clock()
        stale_after = settings.stale_after()
        variants: dict[str, Any] = {}
        for variant, latest in (await reader.latest()).items():
            age = None if latest is None else max(0.0, now - latest["ts"] - latest["seconds"])
            variants[variant] = {
                "latest": latest,
                "age_seconds": age,
                "stale": age is None or age > stale_after,
            }
        return JSON({"now": now, "stale_after": stale_after, "variants": variants})

    @api.get("/config", response_model=ConfigAnswer, responses=unreadable)
    async def config() -> Response:
        """What the web UI needs to know: variants, ranges, cadence, the limiter's presence."""
        return JSON(
            {
                "version": __version__,
                "variants": await reader.variants(),
                "ranges": list(RANGES),
                "scrape_interval": settings.scrape_interval,
                "sse_heartbeat_seconds": settings.dashboard_sse_heartbeat,
                "sse_replay_seconds": REPLAY_SECONDS,
                "limiter": {"configured": limiter.configured},
            }
        )

    @api.get("/limiter", response_model=LimiterAnswer)
    async def limiter_state() -> Response:
        """The limiter's state (its admin `GET /state`), or why it is not available."""
        return JSON(await limiter.state())

    @api.get(
        "/events",
        response_class=EventStream,
        status_code=200,
        responses={
            200: {
                "description": (
                    "Server-Sent Events: `snapshot` events (`id`: the round's start in ms; "
                    '`data`: `{"ts": t, "variants": {name: Point}}`) and `: heartbeat` '
                    "comments."
                ),
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_errors(400, description="A malformed event id."),
            **_errors(503, description="Every live-client slot is taken."),
        },
    )
    async def events(
        request: Request,
        last_event_id: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                pattern=EVENT_ID_PATTERN,
                description="Replay the rounds after this id (the browser sends it itself).",
            ),
        ] = None,
        since: Annotated[
            str | None,
            Query(
                alias="last_event_id",
                pattern=EVENT_ID_PATTERN,
                description="The same as the Last-Event-ID header (which wins), for a first "
                "connection that must follow on from points already fetched.",
            ),
        ] = None,
    ) -> Response:
        """The live stream: one `snapshot` event per collector round, heartbeats between."""
        resume = last_event_id or since
        peer = request.client
        client = f"{peer.host}:{peer.port}" if peer else ""
        try:
            subscription = broadcaster.subscribe(client)
        except TooManyClients as exc:
            return problem(
                503,
                f"too many live clients ({exc}): try again later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        after = None if resume is None else int(resume)
        return EventStream(
            subscription,
            stream(subscription, reader, after, clock),
            None if tracer is None else client_span(tracer, client, after),
            ping=settings.dashboard_sse_heartbeat,
            ping_message_factory=lambda: HEARTBEAT,
            sep="\n",
        )

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi() -> Response:
        """This API's OpenAPI schema."""
        return JSON(app.openapi())

    @api.api_route("/{rest:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def no_such_endpoint(rest: str) -> Response:
        raise HTTPException(404, f"no such API endpoint: /api/{rest}")

    app.include_router(api)

    @app.api_route("/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def web_ui(request: Request, path: str) -> Response:
        """The built web UI, with index.html for the single-page app's own routes."""
        if not guard.allows(request):
            return HTMLResponse(UNAUTHORIZED, 401, headers={"WWW-Authenticate": "Bearer"})
        response = ui.response(path)
        guard.remember(request, response)
        return response

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _install_log_filter() -> None:
    # A dropped SSE client's response is cancelled mid-stream (see ``events``), which
    # uvicorn reports as an error; the broadcaster has logged the drop already.
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DroppedClientFilter) for f in server_log.filters):
        server_log.addFilter(DroppedClientFilter())


def _openapi(app: FastAPI) -> dict[str, Any]:
    # Bad parameters answer 400 here, not FastAPI's 422: say so in the schema.
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
    return app.openapi_schema
