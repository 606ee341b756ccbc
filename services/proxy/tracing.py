"""The proxy's OpenTelemetry: one SERVER span per client request, one CLIENT span per
upstream attempt, and the GenAI metrics (docs/operations.md#opentelemetry).

Imported only when an OTLP endpoint is set (services/shared/telemetry.py): the forwarder
holds ``tracer=None`` otherwise and its hooks are behind a None check, so a proxy without
tracing does no work for it.

Per request: ``ProxyTracer.begin`` continues the client's W3C ``traceparent`` (and
``tracestate``) when it sends a valid one, else starts a trace, as the sampler decides
(``OTEL_TRACES_SAMPLER``). The forwarder then calls the ``RequestTrace`` at a few points:
before the limiter's admission (``admitting``), before each upstream attempt (``attempt``:
a CLIENT span whose ``traceparent`` replaces the client's on the way up), when an attempt
fails in a retryable way (``retryable``), after each attempt (``attempt_done``), on a
refusal (``refused``), and at the end (``end``: the SERVER span's name and attributes, from
what the exchange learned; the GenAI metrics). A request the sampler leaves out still
propagates its context upstream (sampled flag off) and is counted in the metrics; none of
its attributes are computed.

Never on a span: a key (the client's is named by its alias), a header value, and message
content unless OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT is on.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from zai_proxy.proxy.errors import ProxyError
from zai_proxy.proxy.response_facts import ResponseFacts
from zai_proxy.proxy.retries import RetryableAttempt
from zai_proxy.shared.outcomes import Outcome
from zai_proxy.shared.span_export import SpanRecord
from zai_proxy.shared.telemetry import Telemetry

if TYPE_CHECKING:
    from zai_proxy.proxy.forwarding import Exchange
    from zai_proxy.proxy.limiting import Ticket
    from zai_proxy.proxy.routing import Route

# gen_ai.operation.name by route template; other routes get plain HTTP server spans.
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "chat",
}
# The GenAI conventions' advised bucket boundaries (gen-ai-metrics.md).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                    20.48, 40.96, 81.92)  # fmt: skip
# Request model names on spans are cut to this (a client may send anything).
MAX_MODEL_CHARS = 128
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
_NO_RETRY = frozenset({Outcome.OK, Outcome.CLIENT_ERROR})
_SERVER, _CLIENT, _INTERNAL = SpanKind.SERVER.value, SpanKind.CLIENT.value, SpanKind.INTERNAL.value
_UNSET, _ERROR = StatusCode.UNSET.value, StatusCode.ERROR.value
_SAMPLED, _RANDOM = int(TraceFlags.SAMPLED), int(TraceFlags.RANDOM_TRACE_ID)
_ROOT = Context()


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


class ProxyTracer:
    """Starts each request's trace; holds the tracer, the metric instruments and the
    attributes every span shares. One per process."""

    def __init__(
        self,
        telemetry: Telemetry,
        *,
        provider: str,
        variant: str,
        upstreams: dict[str, str],
        capture_content: bool = False,
    ) -> None:
        """``upstreams``: the base URL of each dialect (server.address and server.port)."""
        if telemetry.spans is None:
            raise ValueError("the proxy's telemetry exports its spans from a process of its own")
        self.spans = telemetry.spans
        self.sampler = telemetry.sampler
        self.ids = telemetry.id_generator
        self.random_ids = self.ids.is_trace_id_random()
        self.provider = provider
        self.variant = variant
        self.capture_content = capture_content
        self.addresses = {dialect: _address(url) for dialect, url in upstreams.items()}
        self.propagator = TraceContextTextMapPropagator()
        # Counted in-process, exported by the telemetry's metric reader (shared/histograms.py):
        # the SDK's Histogram.record cost more than the rest of an unsampled request's tracing.
        metrics = telemetry.metrics
        self.token_usage = self.duration = None
        if metrics is None:
            return
        self.token_usage = metrics.histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            bounds=TOKEN_BUCKETS,
            attributes=self._token_attributes,
        )
        self.duration = metrics.histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            bounds=DURATION_BUCKETS,
            attributes=self._duration_attributes,
        )

    def _metric_attributes(
        self, operation: str, model: str, upstream: tuple[str, int]
    ) -> dict[str, Any]:
        address, port = upstream
        return {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": self.provider,
            "gen_ai.request.model": model,
            "server.address": address,
            "server.port": port,
        }

    def _token_attributes(self, key: tuple[str, str, tuple[str, int], str]) -> dict[str, Any]:
        operation, model, upstream, token_type = key
        attributes = self._metric_attributes(operation, model, upstream)
        attributes["gen_ai.token.type"] = token_type
        return attributes

    def _duration_attributes(self, key: tuple[str, str, tuple[str, int], str]) -> dict[str, Any]:
        operation, model, upstream, error = key
        attributes = self._metric_attributes(operation, model, upstream)
        if error:
            attributes["error.type"] = error
        return attributes

    def begin(self, scope: dict[str, Any]) -> RequestTrace:
        """The trace of a request just arrived: its SERVER span's ids and the sampler's
        decision, as the SDK's ``Tracer.start_span`` makes them; its start, now."""
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in (b"traceparent", b"tracestate"):
                carrier[name.decode()] = value.decode("latin-1")
        # Nothing in the proxy makes a span current: without a traceparent the request is
        # a root, decided on an empty context (the sampler's look-up of the current one
        # costs more than the rest of its decision).
        context = self.propagator.extract(carrier) if carrier else _ROOT
        parent = trace.get_current_span(context).get_span_context() if context else None
        if parent is not None and parent.is_valid:
            trace_id, random = parent.trace_id, parent.trace_flags.random_trace_id
        else:
            parent, trace_id, random = None, self.ids.generate_trace_id(), self.random_ids
        result = self.sampler.should_sample(context, trace_id, "proxy", SpanKind.SERVER)
        # RECORD_ONLY (recorded, not sampled) is never exported: it is recorded as little
        # as a dropped span.
        flags = _SAMPLED if result.decision.is_sampled() else 0
        if random:
            flags |= _RANDOM
        return RequestTrace(
            self,
            trace_id,
            self.ids.generate_span_id(),
            flags,
            result.trace_state.to_header() if result.trace_state else "",
            parent.span_id if parent is not None else 0,
            result.attributes,
        )


class RequestTrace:
    """One request's spans, fed by the forwarder's hooks: plain numbers and dicts while
    the request runs, records for the export process (shared/span_export.py) at its end.

    Every span of the request shares the SERVER span's sampling decision: the SDK's
    built-in samplers decide a child as its parent (``parentbased_*``) or from the trace
    id alone (``traceidratio``, ``always_*``), the same answer for the whole request."""

    __slots__ = (
        "_admit_from",
        "_attempt",
        "_attempts",
        "_error",
        "_failure",
        "_limited",
        "_pool",
        "_retry_after",
        "_sampler_attributes",
        "_spans",
        "_status",
        "_upstream_headers",
        "facts",
        "flags",
        "parent_id",
        "recording",
        "span_id",
        "start",
        "state",
        "trace_int",
        "tracer",
    )

    def __init__(
        self,
        tracer: ProxyTracer,
        trace_id: int,
        span_id: int,
        flags: int,
        state: str,
        parent_id: int,
        sampler_attributes: Any,
    ) -> None:
        """The SERVER span's context (``state``: its tracestate header; ``parent_id``:
        the client's span, 0 for none) and the sampler's attributes for it."""
        self.tracer = tracer
        self.trace_int = trace_id
        self.span_id = span_id
        self.flags = flags
        self.state = state
        self.parent_id = parent_id
        self.recording = bool(flags & _SAMPLED)
        self.start = time.time_ns()
        self.facts: ResponseFacts | None = None  # set once the dialect is known
        self._sampler_attributes = sampler_attributes
        # The finished child spans; a request left out by the sampler has none.
        self._spans: list[SpanRecord] = []
        # Unrecorded, every attempt sends the same trace context: the headers are made once.
        self._upstream_headers: list[tuple[str, str]] | None = None
        self._admit_from = 0
        self._pool = ""
        # The attempt under way: its span id, name, start and attributes.
        self._attempt: tuple[int, str, int, dict[str, Any]] | None = None
        self._attempts = 0
        self._failure: Outcome | None = None  # of the attempt before this one
        self._retry_after: float | None = None
        self._status = 0
        self._error = ""
        self._limited = 0.0  # seconds waited in the limiter, all attempts together

    @property
    def trace_id(self) -> str:
        """The trace id in hex, for the access log."""
        return format(self.trace_int, "032x")

    def _record(
        self,
        span_id: int,
        name: str,
        kind: int,
        start: int,
        end: int,
        attributes: dict[str, Any],
        status: int = _UNSET,
    ) -> SpanRecord:
        # The SERVER span's parent is the client's (remote) span, if any; the others' is it.
        if kind == _SERVER:
            parent, remote = self.parent_id, self.parent_id != 0
        else:
            parent, remote = self.span_id, False
        return (self.trace_int, span_id, parent, remote, self.flags, self.state, name, kind,
                start, end, attributes, status, None, ())  # fmt: skip

    def routed(self, route: Route) -> ResponseFacts | None:
        """The route is known: the facts to collect from the answer (None: not recorded)."""
        if self.recording and route.template in OPERATIONS:
            self.facts = ResponseFacts(route.dialect, capture=self.tracer.capture_content)
        return self.facts

    def admitting(self) -> None:
        """An attempt asks the limiter for admission now (in the pool of whichever
        upstream key admits it first)."""
        if self.recording:
            self._admit_from = time.time_ns()
            self._pool = ""

    def attempt(
        self,
        route: Route,
        method: str,
        ticket: Ticket,
        headers: list[tuple[str, str]],
        *,
        pool: str,
        key: str,
    ) -> list[tuple[str, str]]:
        """An attempt goes upstream now, admitted in ``pool`` for the upstream key aliased
        ``key``: its CLIENT span (and the limiter's wait before it, when there was one);
        the headers to send, with this span's traceparent.

        A request the sampler left out gets no CLIENT span: the upstream is sent the
        SERVER span's own context (sampled flag off), which is all a trace of it needs."""
        self._attempts += 1
        self._status, self._retry_after = 0, None
        if not self.recording:
            if self._upstream_headers is None:
                self._upstream_headers = self._traced(headers, self.span_id)
            return self._upstream_headers
        self._pool = pool
        now = time.time_ns()
        if ticket.waited > 0:
            self._limiter_span(ticket.waited, local=ticket.local, end=now)
        self._admit_from = 0
        address, port = self.tracer.addresses[route.dialect]
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "server.address": address,
            "server.port": port,
            "zai_proxy.upstream.key": key,
        }
        if self._attempts > 1:
            attributes["http.request.resend_count"] = self._attempts - 1
            if self._failure is not None:
                attributes["zai_proxy.retry.reason"] = self._failure.value
        span_id = self.tracer.ids.generate_span_id()
        self._attempt = (span_id, f"{method} {route.template}", now, attributes)
        return self._traced(headers, span_id)

    def _traced(self, headers: list[tuple[str, str]], span_id: int) -> list[tuple[str, str]]:
        """``headers`` with the client's trace context replaced by the span ``span_id``'s."""
        out = [pair for pair in headers if pair[0].lower() not in _TRACE_HEADERS]
        out.append(("traceparent", f"00-{self.trace_int:032x}-{span_id:016x}-{self.flags:02x}"))
        if self.state:
            out.append(("tracestate", self.state))
        return out

    def _limiter_span(self, waited: float, *, local: bool, end: int, refused: bool = False) -> None:
        self._limited += waited
        attributes = {
            "zai_proxy.limiter.pool": self._pool,
            "zai_proxy.limiter.wait": waited,
            "zai_proxy.limiter.local": local,
            "zai_proxy.limiter.refused": refused,
        }
        start = self._admit_from or end - int(waited * 1e9)
        span_id = self.tracer.ids.generate_span_id()
        self._spans.append(self._record(span_id, "limiter wait", _INTERNAL, start, end, attributes))

    def retryable(self, failed: RetryableAttempt) -> None:
        """The attempt failed in a way another may fix."""
        if failed.answer is not None:
            self._status = failed.answer.status
        self._retry_after = failed.retry_after

    def attempt_done(self, exchange: Exchange, outcome: Outcome | None) -> None:
        """The attempt is over (its answer passed on, or failed)."""
        if outcome is not None and outcome not in _NO_RETRY:
            self._failure = outcome  # the next attempt's retry reason, the metrics' error
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return
        span_id, name, start, attributes = attempt
        status = self._status or (exchange.status if exchange.started else 0)
        code = _UNSET
        if status:
            attributes["http.response.status_code"] = status
        if outcome is not None:
            attributes["zai_proxy.upstream.outcome"] = outcome.value
            if outcome is not Outcome.OK:
                error = str(status) if outcome is Outcome.CLIENT_ERROR else outcome.value
                attributes["error.type"] = error
                code = _ERROR
        if self._retry_after is not None:
            attributes["zai_proxy.upstream.retry_after"] = self._retry_after
        record = self._record(span_id, name, _CLIENT, start, time.time_ns(), attributes, code)
        self._spans.append(record)

    def refused(self, err: ProxyError) -> None:
        """The proxy answers the request itself (or ends a stream) with this error."""
        self._error = err.code
        if self._admit_from and err.code == "proxy_rate_limited" and self.recording:
            now = time.time_ns()
            waited = (now - self._admit_from) / 1e9
            self._limiter_span(waited, local=False, end=now, refused=True)
        self._admit_from = 0

    def end(self, exchange: Exchange, duration: float) -> None:
        """The request is over: the SERVER span's name and attributes, its record and its
        children's to the export process; the GenAI metrics."""
        operation = OPERATIONS.get(exchange.template)
        error = self._error_type(exchange)
        if operation is not None:
            self._measure(exchange, operation, duration, error)
        if not self.recording:
            return
        address, port = self.tracer.addresses[exchange.dialect]
        attributes: dict[str, Any] = {
            "http.request.method": exchange.method,
            "http.route": exchange.template,
            "zai_proxy.variant": self.tracer.variant,
            "zai_proxy.client.alias": exchange.key,
            "server.address": address,
            "server.port": port,
        }
        if self._sampler_attributes:
            attributes.update(self._sampler_attributes)
        if exchange.status:
            attributes["http.response.status_code"] = exchange.status
        if exchange.ttfb is not None:
            attributes["zai_proxy.time_to_first_byte"] = exchange.ttfb
        if self._limited:
            attributes["zai_proxy.limiter.wait"] = self._limited
        if self._attempts:
            attributes["zai_proxy.upstream.attempts"] = self._attempts
        if operation is None:
            name = f"{exchange.method} {exchange.template}"
        else:
            name = self._genai(exchange, operation, attributes)
        code = _UNSET
        if error:
            attributes["error.type"] = error
            code = _ERROR
        spans = self._spans
        spans.append(
            self._record(self.span_id, name, _SERVER, self.start, time.time_ns(), attributes, code)
        )
        self.tracer.spans.add(spans)

    def _error_type(self, exchange: Exchange) -> str:
        if exchange.disconnected and not exchange.finished:
            return "client_closed"
        if self._error:
            return self._error
        status = exchange.status
        if status == 429 or status >= 500:
            return self._failure.value if self._failure is not None else str(status)
        if status >= 400:
            return str(status)
        return "" if status else "_OTHER"

    def _genai(self, exchange: Exchange, operation: str, attributes: dict[str, Any]) -> str:
        """The GenAI conventions' attributes, into ``attributes``; the span's name."""
        request = exchange.request
        info = request.info if request is not None else None
        model = (info.model or "")[:MAX_MODEL_CHARS] if info is not None else ""
        attributes["gen_ai.operation.name"] = operation
        attributes["gen_ai.provider.name"] = self.tracer.provider
        if model:
            attributes["gen_ai.request.model"] = model
        if info is not None:
            attributes["gen_ai.request.stream"] = info.stream
        facts = self.facts
        if facts is not None:
            if facts.model:
                attributes["gen_ai.response.model"] = facts.model
            if facts.id:
                attributes["gen_ai.response.id"] = facts.id
            if facts.finish_reasons:
                attributes["gen_ai.response.finish_reasons"] = facts.finish_reasons
        usage = exchange.usage
        attributes["zai_proxy.usage.source"] = exchange.usage_source or "none"
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.input
            attributes["gen_ai.usage.output_tokens"] = usage.output
            attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read
            attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write
            if usage.reasoning:
                attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning
        if self.tracer.capture_content:
            self._content(exchange, attributes)
        return f"{operation} {model}" if model else operation

    def _content(self, exchange: Exchange, attributes: dict[str, Any]) -> None:
        """Message content, only when capture is on (the conventions' JSON forms)."""
        request = exchange.request
        parsed = request.info.parsed if request is not None and request.info else None
        if isinstance(parsed, dict):
            messages = _input_messages(parsed)
            if messages:
                attributes["gen_ai.input.messages"] = orjson.dumps(messages).decode()
            system = parsed.get("system")
            if isinstance(system, str | list):
                attributes["gen_ai.system_instructions"] = orjson.dumps(_parts(system)).decode()
        tap = exchange.tap
        text = tap.account.output_text() if tap is not None else ""
        if not text and self.facts is not None:
            text = self.facts.output_text
        if text:
            output = [{"role": "assistant", "parts": [{"type": "text", "content": text}]}]
            attributes["gen_ai.output.messages"] = orjson.dumps(output).decode()

    def _measure(self, exchange: Exchange, operation: str, duration: float, error: str) -> None:
        # Keys of the metric attributes' values, all bounded (the normalised model label):
        # a series' attributes are built once (ProxyTracer._token_attributes, ...).
        tracer = self.tracer
        model, upstream = exchange.model, tracer.addresses[exchange.dialect]
        usage = exchange.usage
        if usage is not None and tracer.token_usage is not None:
            tracer.token_usage.record((operation, model, upstream, "input"), usage.input)
            tracer.token_usage.record((operation, model, upstream, "output"), usage.output)
        if tracer.duration is not None:
            tracer.duration.record((operation, model, upstream, error), duration)


def _parts(content: object) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append({"type": "text", "content": block.get("text", "")})
            elif isinstance(block, dict):
                parts.append(block)
    return parts


def _input_messages(parsed: dict[str, Any]) -> list[dict[str, Any]]:
    messages = parsed.get("messages")
    if isinstance(messages, list):
        return [
            {"role": message.get("role", "user"), "parts": _parts(message.get("content"))}
            for message in messages
            if isinstance(message, dict)
        ]
    prompt = parsed.get("prompt")
    if isinstance(prompt, str):
        return [{"role": "user", "parts": _parts(prompt)}]
    return []
