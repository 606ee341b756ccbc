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
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from zai_proxy.proxy.errors import ProxyError
from zai_proxy.proxy.response_facts import ResponseFacts
from zai_proxy.proxy.retries import RetryableAttempt
from zai_proxy.shared.outcomes import Outcome
from zai_proxy.shared.telemetry import Telemetry

if TYPE_CHECKING:
    from opentelemetry.trace import Span

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
        self.tracer = telemetry.tracer
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
        """The trace of a request just arrived: its SERVER span, started now."""
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in (b"traceparent", b"tracestate"):
                carrier[name.decode()] = value.decode("latin-1")
        context = self.propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span("proxy", context=context, kind=SpanKind.SERVER)
        return RequestTrace(self, span)


class RequestTrace:
    """One request's spans, fed by the forwarder's hooks."""

    __slots__ = (
        "_admit_from",
        "_attempt",
        "_attempts",
        "_context",
        "_error",
        "_failure",
        "_limited",
        "_pool",
        "_retry_after",
        "_status",
        "_upstream_headers",
        "facts",
        "recording",
        "span",
        "tracer",
    )

    def __init__(self, tracer: ProxyTracer, span: Span) -> None:
        self.tracer = tracer
        self.span = span
        self.recording = span.is_recording()
        self.facts: ResponseFacts | None = None  # set once the dialect is known
        # The parent of the attempts' and the limiter's spans; a request left out by the
        # sampler has none of them.
        self._context = trace.set_span_in_context(span) if self.recording else None
        # Unrecorded, every attempt sends the same trace context: the headers are made once.
        self._upstream_headers: list[tuple[str, str]] | None = None
        self._admit_from = 0
        self._pool = ""
        self._attempt: Span | None = None
        self._attempts = 0
        self._failure: Outcome | None = None  # of the attempt before this one
        self._retry_after: float | None = None
        self._status = 0
        self._error = ""
        self._limited = 0.0  # seconds waited in the limiter, all attempts together

    @property
    def trace_id(self) -> str:
        """The trace id in hex, for the access log."""
        return format(self.span.get_span_context().trace_id, "032x")

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
                self._upstream_headers = _traced(headers, self.span)
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
        span = self._attempt = self.tracer.tracer.start_span(
            f"{method} {route.template}",
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        return _traced(headers, span)

    def _limiter_span(self, waited: float, *, local: bool, end: int, refused: bool = False) -> None:
        self._limited += waited
        span = self.tracer.tracer.start_span(
            "limiter wait",
            context=self._context,
            start_time=self._admit_from or end - int(waited * 1e9),
            attributes={
                "zai_proxy.limiter.pool": self._pool,
                "zai_proxy.limiter.wait": waited,
                "zai_proxy.limiter.local": local,
                "zai_proxy.limiter.refused": refused,
            },
        )
        span.end(end)

    def retryable(self, failed: RetryableAttempt) -> None:
        """The attempt failed in a way another may fix."""
        if failed.answer is not None:
            self._status = failed.answer.status
        self._retry_after = failed.retry_after

    def attempt_done(self, exchange: Exchange, outcome: Outcome | None) -> None:
        """The attempt is over (its answer passed on, or failed)."""
        if outcome is not None and outcome not in _NO_RETRY:
            self._failure = outcome  # the next attempt's retry reason, the metrics' error
        span, self._attempt = self._attempt, None
        if span is None:
            return
        status = self._status or (exchange.status if exchange.started else 0)
        attributes: dict[str, Any] = {}
        if status:
            attributes["http.response.status_code"] = status
        if outcome is not None:
            attributes["zai_proxy.upstream.outcome"] = outcome.value
            if outcome is not Outcome.OK:
                error = str(status) if outcome is Outcome.CLIENT_ERROR else outcome.value
                attributes["error.type"] = error
                span.set_status(Status(StatusCode.ERROR))
        if self._retry_after is not None:
            attributes["zai_proxy.upstream.retry_after"] = self._retry_after
        span.set_attributes(attributes)
        span.end()

    def refused(self, err: ProxyError) -> None:
        """The proxy answers the request itself (or ends a stream) with this error."""
        self._error = err.code
        if self._admit_from and err.code == "proxy_rate_limited" and self.recording:
            now = time.time_ns()
            waited = (now - self._admit_from) / 1e9
            self._limiter_span(waited, local=False, end=now, refused=True)
        self._admit_from = 0

    def end(self, exchange: Exchange, duration: float) -> None:
        """The request is over: name the SERVER span, give it its attributes, end it, and
        count the GenAI metrics."""
        span = self.span
        operation = OPERATIONS.get(exchange.template)
        error = self._error_type(exchange)
        if operation is not None:
            self._measure(exchange, operation, duration, error)
        if not self.recording:
            span.end()
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
        if exchange.status:
            attributes["http.response.status_code"] = exchange.status
        if exchange.ttfb is not None:
            attributes["zai_proxy.time_to_first_byte"] = exchange.ttfb
        if self._limited:
            attributes["zai_proxy.limiter.wait"] = self._limited
        if self._attempts:
            attributes["zai_proxy.upstream.attempts"] = self._attempts
        if operation is None:
            span.update_name(f"{exchange.method} {exchange.template}")
        else:
            self._genai(exchange, operation, attributes)
        if error:
            attributes["error.type"] = error
            span.set_status(Status(StatusCode.ERROR))
        span.set_attributes(attributes)
        span.end()

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

    def _genai(self, exchange: Exchange, operation: str, attributes: dict[str, Any]) -> None:
        """The GenAI conventions' attributes, into ``attributes``; the span's name."""
        request = exchange.request
        info = request.info if request is not None else None
        model = (info.model or "")[:MAX_MODEL_CHARS] if info is not None else ""
        self.span.update_name(f"{operation} {model}" if model else operation)
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


def _traced(headers: list[tuple[str, str]], span: Span) -> list[tuple[str, str]]:
    """``headers`` with the client's trace context replaced by ``span``'s."""
    context = span.get_span_context()
    out = [pair for pair in headers if pair[0].lower() not in _TRACE_HEADERS]
    out.append(
        ("traceparent", f"00-{context.trace_id:032x}-{context.span_id:016x}-"
         f"{context.trace_flags:02x}")
    )  # fmt: skip
    state = context.trace_state.to_header()
    if state:
        out.append(("tracestate", state))
    return out


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
