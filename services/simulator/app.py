"""The simulator's ASGI application: routing by path suffix, the hidden limit, the quota,
scripted answers."""

import asyncio
import contextlib
import dataclasses
import enum
import itertools
import math
import time
from collections.abc import Coroutine
from typing import Any

import orjson

from . import anthropic, embeddings, openai, tools
from .behaviour import (
    DEFAULT_BEHAVIOUR,
    HEADER_PREFIX,
    Behaviour,
    BehaviourError,
    parse_behaviour,
)
from .config import SimulatorConfig
from .errors import HIDDEN_LIMIT_BODIES, bad_request, not_found, status_error, zai_error
from .failures import FailFirstCounter
from .quota import NO_QUOTA, SimulatedQuota
from .ratelimit import HiddenLimiter
from .recording import RequestRecorder, request_view
from .responses import send_body, send_empty, send_partial_body
from .sse import PLAIN, SseFormat
from .stats import SimulatorStats
from .streaming import send_stream
from .text import bulk_text, split_text, word_count
from .types import Receive, Scope, Send

DEFAULT_MODEL = "glm-4.6"
CONTROL_PREFIX = "/_sim/"
QUOTA_PATH = "/api/monitor/usage/quota/limit"


class Route(enum.Enum):
    """What a request asks for, told by its method and the suffix of its path."""

    CHAT = "chat"
    MESSAGES = "messages"
    COUNT_TOKENS = "count_tokens"
    EMBEDDINGS = "embeddings"
    MODELS = "models"
    MODEL = "model"
    QUOTA = "quota"
    ECHO = "echo"


def route_for(method: str, path: str) -> Route:
    """The route of a request; any base prefix works, anything unknown is echoed."""
    if method == "POST":
        if path.endswith("/chat/completions"):
            return Route.CHAT
        if path.endswith("/v1/messages"):
            return Route.MESSAGES
        if path.endswith("/v1/messages/count_tokens"):
            return Route.COUNT_TOKENS
        if path.endswith("/embeddings"):
            return Route.EMBEDDINGS
    elif method == "GET":
        if path.endswith("/models"):
            return Route.MODELS
        if path.rpartition("/")[0].endswith("/models"):
            return Route.MODEL
        if path.endswith(QUOTA_PATH):
            return Route.QUOTA
    return Route.ECHO


# The routes the hidden limit, the quota and /_sim/stats apply to.
_GENERATION = frozenset({Route.CHAT, Route.MESSAGES, Route.EMBEDDINGS})


@dataclasses.dataclass(slots=True)
class _KeyLane:
    """The hidden limits, quota and counters of one configured upstream key."""

    name: str
    limiter: HiddenLimiter
    quota: SimulatedQuota | None
    refuse_code: int | None
    stats: SimulatorStats = dataclasses.field(default_factory=SimulatorStats)


def _presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
        elif name == b"x-api-key":
            return value.strip()
    return None


class SimulatorApp:
    """A simulated OpenAI- and Anthropic-compatible upstream with a hidden rate limit."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._limiter = HiddenLimiter(
            config.rate_limit,
            config.schedule,
            config.max_concurrency,
            config.clock,
            kind=config.limit_kind,
            burst=config.burst_seconds,
            window=config.window_seconds,
            concurrency_schedule=config.concurrency_schedule,
            noise=config.noise,
        )
        self._quota = (
            SimulatedQuota(config.quota_requests, config.clock) if config.quota_requests else None
        )
        self._stats = SimulatorStats()
        self._lanes = {
            k.key.encode(): _KeyLane(
                k.name,
                HiddenLimiter(
                    k.rate_limit,
                    (),
                    k.max_concurrency,
                    config.clock,
                    kind=config.limit_kind,
                    burst=config.burst_seconds,
                    window=config.window_seconds,
                ),
                SimulatedQuota(k.quota_requests, config.clock) if k.quota_requests else None,
                k.refuse_code,
            )
            for k in config.keys
        }
        self._recorder = RequestRecorder(config.recorded_requests)
        self._failures = FailFirstCounter(config.fail_first_keys)
        self._ids = itertools.count(1)
        self._created = int(time.time())
        self._models = openai.model_list(self._created)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith(CONTROL_PREFIX):
            await self._control(scope, path, send)
            return
        body = await _read_body(receive)
        sim_headers: list[tuple[bytes, bytes]] | None = None
        request_id: bytes | None = None
        for name, value in scope["headers"]:
            if name.startswith(HEADER_PREFIX):
                if sim_headers is None:
                    sim_headers = []
                sim_headers.append((name, value))
            elif name == b"x-request-id":
                request_id = value
        if request_id is not None:
            self._recorder.add(request_id.decode("latin-1"), scope, body)
        try:
            behaviour = DEFAULT_BEHAVIOUR if sim_headers is None else parse_behaviour(sim_headers)
        except BehaviourError as exc:
            await send_body(send, 400, bad_request(str(exc)))
            return

        route = route_for(scope["method"], path)
        if route not in _GENERATION:
            await self._answer(route, scope, body, behaviour, receive, send)
            return
        lane = self._lanes.get(_presented_key(scope["headers"]) or b"") if self._lanes else None
        limiter, quota = self._limiter, self._quota
        every: tuple[SimulatorStats, ...] = (self._stats,)
        if lane is not None:
            limiter, quota, every = lane.limiter, lane.quota, (self._stats, lane.stats)
        for stats in every:
            stats.requests += 1
        if lane is not None and lane.refuse_code is not None:
            for stats in every:
                stats.reject(lane.refuse_code)
            await send_body(send, 429, zai_error(lane.refuse_code, "openai"))
            return
        if quota is not None:
            spent = quota.exhausted()
            if spent is not None:
                quota_code, reset_at = spent
                for stats in every:
                    stats.reject(quota_code)
                await send_body(send, 429, zai_error(quota_code, "openai", reset_at))
                return
        code = limiter.admit()
        if code is not None:
            for stats in every:
                stats.reject(code)
            await send_body(send, 429, HIDDEN_LIMIT_BODIES[code])
            return
        for stats in every:
            stats.accepted += 1
            stats.max_in_flight = max(stats.max_in_flight, limiter.in_flight)
        if quota is not None:
            quota.spend()
        try:
            await self._answer(route, scope, body, behaviour, receive, send)
        finally:
            limiter.release()

    async def _answer(
        self,
        route: Route,
        scope: Scope,
        body: bytes,
        behaviour: Behaviour,
        receive: Receive,
        send: Send,
    ) -> None:
        answer = self._respond(route, scope, body, behaviour, send)
        if behaviour.sleeps:
            # A slow answer must end when its client goes away, or it would hold its
            # concurrency slot for nobody.
            await _cancel_on_disconnect(answer, receive)
        else:
            await answer

    async def _respond(
        self, route: Route, scope: Scope, body: bytes, behaviour: Behaviour, send: Send
    ) -> None:
        failure = self._scripted_failure(behaviour)
        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if failure is not None:
            if route in _GENERATION:
                self._stats.scripted_errors += 1
            status, error_body = failure
            retry_after = behaviour.retry_after
            extra = (
                []
                if retry_after is None
                else [(b"retry-after", retry_after.encode("latin-1", "replace"))]
            )
            if behaviour.break_after is not None:
                await send_partial_body(send, status, error_body, behaviour.break_after)
            else:
                await send_body(send, status, error_body, extra_headers=extra)
        elif behaviour.empty:
            await send_empty(send)
        elif route is Route.CHAT:
            await self._chat(body, behaviour, send)
        elif route is Route.MESSAGES:
            await self._messages(body, behaviour, send)
        elif route is Route.EMBEDDINGS:
            await self._embeddings(body, behaviour, send)
        elif route is Route.COUNT_TOKENS:
            prompt = len(body) // 4 if behaviour.prompt_tokens is None else behaviour.prompt_tokens
            await _send_fixed(send, anthropic.count_tokens(prompt), behaviour)
        elif route is Route.MODELS:
            await _send_fixed(send, self._models, behaviour)
        elif route is Route.MODEL:
            name = scope["path"].rpartition("/")[2]
            found = openai.model(name, self._created)
            if found is None:
                await send_body(send, 404, not_found(f"the model {name!r} does not exist"))
            else:
                await _send_fixed(send, found, behaviour)
        elif route is Route.QUOTA:
            lane = self._lanes.get(_presented_key(scope["headers"]) or b"")
            quota = self._quota if lane is None else lane.quota
            answer = NO_QUOTA if quota is None else quota.to_json()
            await _send_fixed(send, answer, behaviour)
        else:
            await _send_fixed(send, orjson.dumps(request_view(scope, body)), behaviour)

    def _scripted_failure(self, behaviour: Behaviour) -> tuple[int, bytes] | None:
        if behaviour.fail_first is not None:
            # parse_behaviour refuses x-sim-fail-first without x-sim-key
            key = behaviour.key or ""
            if not self._failures.should_fail(key, behaviour.fail_first):
                return None
        elif not behaviour.scripts_error:
            return None
        if behaviour.zai_code is not None:
            status = behaviour.status or 429
            default = zai_error(behaviour.zai_code, behaviour.error_shape)
        else:
            status = behaviour.status or 503
            default = status_error(status)
        return status, default if behaviour.body is None else behaviour.body

    async def _chat(self, body: bytes, behaviour: Behaviour, send: Send) -> None:
        request = _parse_request(body)
        if request is None:
            await send_body(send, 400, bad_request("the request body is not a JSON object"))
            return
        model = _model(request)
        ident = f"chatcmpl-sim{next(self._ids)}"
        created = int(time.time())
        streamed = request.get("stream") is True or behaviour.stream_bytes is not None
        calls = [] if behaviour.stream_bytes else _calls("openai", request, behaviour)
        completion = tools.output_tokens(calls) if calls else word_count(behaviour.text)
        if not streamed:
            usage = behaviour.usage_for(len(body), completion)
            answer = openai.completion(ident, created, model, behaviour.text, usage, calls)
            await _send_fixed(send, answer, behaviour)
            return
        fmt = _format(behaviour)
        include_usage = behaviour.usage and _include_usage(request)
        chunks = openai.ChunkStream(fmt, ident, created, model, include_usage)
        if calls:
            usage = behaviour.usage_for(len(body), completion)
            events = chunks.tool_events(calls, behaviour.chunks, usage)
        elif behaviour.stream_bytes is None:
            usage = behaviour.usage_for(len(body), word_count(behaviour.text))
            events = chunks.events(split_text(behaviour.text, behaviour.chunks), usage)
        else:
            text = bulk_text(behaviour.text)
            event = chunks.content_event(text)
            count = _bulk_count(behaviour.stream_bytes, event)
            usage = behaviour.usage_for(len(body), word_count(text) * count)
            events = chunks.bulk_events(event, count, usage)
        await send_stream(send, events, behaviour, fmt)

    async def _messages(self, body: bytes, behaviour: Behaviour, send: Send) -> None:
        request = _parse_request(body)
        if request is None:
            await send_body(send, 400, bad_request("the request body is not a JSON object"))
            return
        model = _model(request)
        ident = f"msg_sim{next(self._ids)}"
        streamed = request.get("stream") is True or behaviour.stream_bytes is not None
        calls = [] if behaviour.stream_bytes else _calls("anthropic", request, behaviour)
        completion = tools.output_tokens(calls) if calls else word_count(behaviour.text)
        if not streamed:
            usage = behaviour.usage_for(len(body), completion)
            answer = anthropic.message(ident, model, behaviour.text, usage, calls)
            await _send_fixed(send, answer, behaviour)
            return
        fmt = _format(behaviour)
        stream = anthropic.EventStream(fmt, ident, model)
        if calls:
            usage = behaviour.usage_for(len(body), completion)
            events = stream.tool_events(calls, behaviour.chunks, usage)
        elif behaviour.stream_bytes is None:
            usage = behaviour.usage_for(len(body), word_count(behaviour.text))
            events = stream.events(split_text(behaviour.text, behaviour.chunks), usage)
        else:
            text = bulk_text(behaviour.text)
            event = stream.content_event(text)
            count = _bulk_count(behaviour.stream_bytes, event)
            usage = behaviour.usage_for(len(body), word_count(text) * count)
            events = stream.bulk_events(event, count, usage)
        await send_stream(send, events, behaviour, fmt)

    async def _embeddings(self, body: bytes, behaviour: Behaviour, send: Send) -> None:
        request = _parse_request(body)
        if request is None:
            await send_body(send, 400, bad_request("the request body is not a JSON object"))
            return
        try:
            asked = embeddings.parse_request(request)
        except embeddings.EmbeddingRequestError as exc:
            await send_body(send, 400, bad_request(str(exc)))
            return
        prompt: int | None = None
        if behaviour.usage:
            prompt = behaviour.prompt_tokens
            if prompt is None:
                prompt = sum(map(embeddings.input_tokens, asked.inputs))
        await _send_fixed(send, embeddings.answer(asked, prompt), behaviour)

    async def _control(self, scope: Scope, path: str, send: Send) -> None:
        method = scope["method"]
        if path.startswith("/_sim/requests/") and method == "GET":
            view = self._recorder.view(path[len("/_sim/requests/") :])
            if view is None:
                await send_body(send, 404, b'{"error":{"message":"no request with that id"}}')
            else:
                await send_body(send, 200, view)
        elif path == "/_sim/stats" and method == "GET":
            keys = {lane.name: lane.stats.to_dict(lane.limiter) for lane in self._lanes.values()}
            await send_body(send, 200, self._stats.to_json(self._limiter, keys=keys))
        elif path == "/_sim/reset" and method == "POST":
            in_flight = self._limiter.in_flight
            self._failures.reset()
            for quota in (self._quota, *(lane.quota for lane in self._lanes.values())):
                if quota is not None:
                    quota.reset()
            for lane in self._lanes.values():
                lane.stats.reset(lane.limiter.in_flight)
                in_flight += lane.limiter.in_flight
            self._stats.reset(in_flight)
            await send_body(send, 200, b'{"reset":true}')
        else:
            await send_body(send, 404, b'{"error":{"message":"unknown simulator control"}}')


def build_app(config: SimulatorConfig) -> SimulatorApp:
    """The ASGI application of a simulated upstream with the given hidden limits."""
    return SimulatorApp(config)


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _send_fixed(send: Send, body: bytes, behaviour: Behaviour) -> None:
    if behaviour.break_after is not None:
        await send_partial_body(send, 200, body, behaviour.break_after)
    else:
        await send_body(send, 200, body)


async def _cancel_on_disconnect(answer: Coroutine[Any, Any, None], receive: Receive) -> None:
    task = asyncio.ensure_future(answer)
    watcher = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        task.result()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _parse_request(body: bytes) -> dict[str, Any] | None:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return request if isinstance(request, dict) else None


def _model(request: dict[str, Any]) -> str:
    model = request.get("model")
    return model if isinstance(model, str) and model else DEFAULT_MODEL


def _calls(
    dialect: tools.Dialect, request: dict[str, Any], behaviour: Behaviour
) -> list[tools.ToolCall]:
    return tools.tool_calls(dialect, request, behaviour.tool_calls)


def _include_usage(request: dict[str, Any]) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _format(behaviour: Behaviour) -> SseFormat:
    if behaviour.crlf or behaviour.multiline:
        return SseFormat(crlf=behaviour.crlf, multiline=behaviour.multiline)
    return PLAIN


def _bulk_count(stream_bytes: int, event: bytes) -> int:
    """How many copies of a ~16 KB event make about `stream_bytes` (the rest is < 1 KB)."""
    return max(1, math.ceil(stream_bytes / len(event)))
