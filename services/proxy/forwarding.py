"""The hot path: one request's way through the proxy.

resolve the target → refuse what cannot be queued or held (before reading it) → read the
body → parse it once (model, stream) → per attempt: an upstream key and its admission
(key_routing.py) → take a worker → open the upstream response → a retryable failure goes
round again (retries.py), a key's spent quota moves the request to another key, anything
else is passed on (whole when small, chunk by chunk otherwise, reading usage as it goes)
→ count tokens → metrics and one log line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp

from zai_proxy.limiter.store import PRIORITIES, Claim
from zai_proxy.proxy.accesslog import AccessLog
from zai_proxy.proxy.accounting import Accounting, Body, JsonBody, Request, StreamTap
from zai_proxy.proxy.admission import BodyBudget, WorkerPool
from zai_proxy.proxy.auth import ANONYMOUS, ClientKeys
from zai_proxy.proxy.classify import classify_status, key_verdict
from zai_proxy.proxy.clients import BudgetExceeded
from zai_proxy.proxy.errors import (
    REFUSED_CODE,
    REFUSED_STATUS,
    MethodNotAllowed,
    Overloaded,
    ProxyError,
    RequestTimeout,
    RequestTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from zai_proxy.proxy.headers import (
    client_response_headers,
    request_id_of,
    upstream_request_headers,
)
from zai_proxy.proxy.key_routing import KeyRouter, UpstreamKey
from zai_proxy.proxy.limiting import RateLimited
from zai_proxy.proxy.metrics import UNKNOWN, ProxyMetrics
from zai_proxy.proxy.retries import RETRYABLE, RetryableAttempt, RetryPolicy, UpstreamAnswer
from zai_proxy.proxy.routing import Dialect, Route, Router
from zai_proxy.proxy.told_limits import told_rate
from zai_proxy.proxy.upstream import (
    UPSTREAM_ERRORS,
    UpstreamFailureLog,
    open_response,
    translate,
)
from zai_proxy.proxy.usage import Usage
from zai_proxy.shared.outcomes import Outcome
from zai_proxy.shared.proxy_metrics import ORIGIN_CLIENT, ORIGIN_PROXY, ORIGIN_UPSTREAM

if TYPE_CHECKING:
    # Imported only with tracing on (app.py): a proxy without it never loads OpenTelemetry.
    from zai_proxy.proxy.response_facts import ResponseFacts
    from zai_proxy.proxy.tracing import ProxyTracer, RequestTrace

Scope = dict[str, Any]
Message = dict[str, Any]
# 429s that say a key is full now. Its retry waits its turn on that key, whose limit the
# 429 has just lowered (as with one key): sent to another key that has learned no limit
# yet, as every key at a cold start, it would likely meet a 429 there too.
LIMITED = frozenset({Outcome.RATE_FREQUENCY, Outcome.RATE_CONCURRENCY})
Headers = list[tuple[bytes, bytes]]

# Non-streamed answers with a known length up to this size are read whole and sent in
# one write; anything else is passed on chunk by chunk as it arrives.
WHOLE_BODY_LIMIT = 1 << 20
# Error answers (429, 5xx) are read whole, up to this, to classify them and to retry.
MAX_ERROR_BODY = 1 << 20
STATUS_CLIENT_CLOSED = 499
# TRACE asks the upstream to echo the request it got, upstream key included; CONNECT asks
# for a tunnel, and aiohttp would send it to the upstream's own host and port.
REFUSED_METHODS = frozenset({"TRACE", "CONNECT"})

log = logging.getLogger("zai_proxy.proxy")


class ClientDisconnected(Exception):
    """The client went away before its request was read."""


class KeyRefused(Exception):
    """An upstream key answered that it cannot serve this request (a quota-class 429):
    the request moves to another key."""

    def __init__(self, alias: str, answer: UpstreamAnswer, *, parked: bool) -> None:
        super().__init__(alias)
        self.alias = alias
        self.answer = answer
        self.parked = parked  # the key was parked; else only this request's model refused


@dataclass(slots=True)
class Exchange:
    """What is known about one request as it passes; read by metrics and the access log."""

    start: float
    method: str
    request_id: str
    template: str = "/other"
    dialect: Dialect = "openai"
    model: str = UNKNOWN
    key: str = ANONYMOUS
    status: int = 0
    size: int = 0
    ttfb: float | None = None
    origin: str = ""  # who answered (ORIGINS); empty until an answer begins
    started: bool = False
    finished: bool = False
    disconnected: bool = False
    request: Request | None = None
    tap: StreamTap | None = None
    body_usage: Usage | None = None
    output_text: str = ""
    usage: Usage | None = None
    usage_source: str = ""
    held: int = 0  # bytes of the body budget reserved
    trace: RequestTrace | None = None  # tracing on (tracing.py)
    facts: ResponseFacts | None = None  # what the answer says of itself, when traced
    limited_by: str = ""  # the upstream key whose 429 the next attempt waits its turn on
    claim: Claim | None = None  # the client's, for the limiter (clients.py); None: no clients
    admitted: bool = False  # its first attempt was admitted


class DisconnectWatch:
    """Cancels the request's task when the client goes away, freeing its worker."""

    __slots__ = ("_exchange", "_receive", "_task", "_watcher")

    def __init__(self, receive: Any, exchange: Exchange) -> None:
        self._receive = receive
        self._exchange = exchange
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None

    def __enter__(self) -> DisconnectWatch:
        self._task = asyncio.current_task()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Dropping the references breaks the request ↔ watcher cycle, so a finished request
        # is freed by reference counting, not by the garbage collector (bench/profile_proxy).
        # A finished response needs no cancel: uvicorn wakes the watcher when it completes.
        watcher, self._watcher, self._task = self._watcher, None, None
        if watcher is not None and not self._exchange.finished:
            watcher.cancel()

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                # uvicorn also answers "disconnect" once the response is complete.
                if not self._exchange.finished and self._task is not None:
                    self._exchange.disconnected = True
                    self._task.cancel()
                return


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The request's Content-Length (the parser refused every malformed or doubled one),
    or None: a chunked body, or none."""
    for name, value in headers:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


async def read_body(
    receive: Any,
    exchange: Exchange,
    declared: int | None,
    *,
    limit: int,
    silence: float,
    deadline: float,
    budget: BodyBudget,
) -> Body:
    """The whole request body, refusing more than ``limit`` bytes, ``silence`` seconds
    without a byte or ``deadline`` seconds for all of it (a client that stalls or trickles
    would otherwise hold what it sent), and what the process's body budget cannot hold:
    a declared length is reserved before a byte is read, a chunked body chunk by chunk.
    What is reserved is noted in ``exchange.held``; the caller gives it back."""
    if declared is not None:
        if declared > limit:
            raise RequestTooLarge(f"request body is larger than {limit} bytes")
        budget.reserve(declared)
        exchange.held = declared
    # One copy: a declared length is filled in place, a chunked body grows as it comes.
    body = bytearray(declared or 0)
    size = 0
    loop = asyncio.get_running_loop()
    ends = loop.time() + deadline
    while True:
        left = ends - loop.time()
        try:
            async with asyncio.timeout(min(silence, left)):
                message = await receive()
        except TimeoutError:
            if left <= silence:
                raise RequestTimeout(
                    f"the request body did not arrive within {deadline:g} s"
                ) from None
            raise RequestTimeout(f"the request body stalled for {silence:g} s") from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            if size + len(chunk) > limit:
                raise RequestTooLarge(f"request body is larger than {limit} bytes")
            if declared is None:
                budget.reserve(len(chunk))
                exchange.held += len(chunk)
                body += chunk
            else:
                body[size : size + len(chunk)] = chunk
            size += len(chunk)
        if not message.get("more_body", False):
            return body if body else b""


class Forwarder:
    """Forwards requests to the upstream and streams the answers back."""

    def __init__(
        self,
        *,
        router: Router,
        session: aiohttp.ClientSession,
        pool: WorkerPool,
        metrics: ProxyMetrics,
        accounting: Accounting,
        upstream: KeyRouter,
        retries: RetryPolicy,
        max_body: int,
        body_timeout: float,
        body_deadline: float,
        budget: BodyBudget,
        access_log: AccessLog | None,
        keys: ClientKeys,
        tracer: ProxyTracer | None = None,
    ) -> None:
        self.router = router
        self.upstream = upstream
        self.retries = retries
        self.session = session
        self.pool = pool
        self.metrics = metrics
        self.accounting = accounting
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.body_deadline = body_deadline
        self.budget = budget
        self.failures = UpstreamFailureLog()
        self.access_log = access_log
        self.keys = keys
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        exchange = Exchange(time.perf_counter(), scope["method"], request_id_of(scope["headers"]))
        if self.tracer is not None:
            exchange.trace = self.tracer.begin(scope)
        try:
            try:
                await self._forward(scope, receive, send, exchange)
            except ProxyError as err:
                await self._refuse(send, exchange, err)
            except ClientDisconnected:
                refused = scope.get(REFUSED_STATUS)
                if refused is None:
                    exchange.disconnected = True
                else:
                    exchange.status = refused  # the connection layer answered it
                    exchange.origin = ORIGIN_PROXY
                    self.metrics.refusal(scope.get(REFUSED_CODE, "proxy_error"))
            except asyncio.CancelledError:
                if not exchange.disconnected:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
            await self._count_tokens(exchange)
        finally:
            if exchange.held:
                self.budget.release(exchange.held)
            self._record(exchange)

    async def _forward(self, scope: Scope, receive: Any, send: Any, exchange: Exchange) -> None:
        route = self.router.resolve(scope["raw_path"], scope["query_string"])
        exchange.template, exchange.dialect = route.template, route.dialect
        if exchange.trace is not None:
            exchange.facts = exchange.trace.routed(route)
        if exchange.method in REFUSED_METHODS:
            raise MethodNotAllowed(f"{exchange.method} is not forwarded")
        exchange.key = self.keys.alias_of(scope["headers"])
        exchange.claim = self.keys.claim(exchange.key, scope["headers"])
        if self.pool.is_full():
            # Refused before its body is read: reading it would only be thrown away.
            raise Overloaded("the proxy's request queue is full", retry_after=1.0)
        body = await read_body(
            receive,
            exchange,
            declared_length(scope["headers"]),
            limit=self.max_body,
            silence=self.body_timeout,
            deadline=self.body_deadline,
            budget=self.budget,
        )
        request = exchange.request = self.accounting.prepare(route, exchange.method, body)
        if request.info is None and request.counted and self.accounting.enabled and body:
            self.metrics.unparseable.inc()
        del body  # the request holds what goes upstream (a copy when usage was injected)
        exchange.model = self.metrics.models(request.model)

        with DisconnectWatch(receive, exchange):
            headers: Headers = scope["headers"]
            # Keys that refused this request's model (1311); a parked key is skipped by
            # its parking, and when every key is parked the router answers for all.
            skipped: set[str] = set()
            for _ in range(2 * len(self.upstream.keys)):
                try:
                    try:
                        await self._attempt(send, exchange, route, request, headers, skipped)
                    except RetryableAttempt as failed:
                        await self._retry(send, exchange, route, request, headers, skipped, failed)
                    return
                except KeyRefused as refused:
                    last = refused.answer
                    if not refused.parked:
                        skipped.add(refused.alias)
                    if not self.upstream.others(skipped):
                        break
            await self._pass_answer(send, exchange, last)

    async def _retry(
        self,
        send: Any,
        exchange: Exchange,
        route: Route,
        request: Request,
        headers: Headers,
        skipped: set[str],
        failed: RetryableAttempt,
    ) -> None:
        """Retry a failed first attempt while the policy allows; pass on the last answer."""
        if self.retries.retryable(failed):
            self._count_retry(failed)
            await asyncio.sleep(self.retries.delay(failed, 1))
            try:
                async for attempt in self.retries.retries(self._count_retry):
                    with attempt:
                        await self._attempt(send, exchange, route, request, headers, skipped)
                return
            except RetryableAttempt as last:
                failed = last
        if failed.answer is None:
            raise failed.error or UpstreamUnavailable("the upstream failed") from None
        await self._pass_answer(send, exchange, failed.answer)

    async def _attempt(
        self,
        send: Any,
        exchange: Exchange,
        route: Route,
        request: Request,
        client_headers: Headers,
        skipped: set[str],
    ) -> None:
        """One upstream attempt on the key with the most headroom, admitted by its
        limiter; raise RetryableAttempt to retry, KeyRefused to move to another key.

        The limiter admits first, then the attempt takes a worker: a request waiting for
        its turn at the upstream's rate holds no worker (MAX_WORKERS bounds what is upstream).
        """
        trace = exchange.trace
        if trace is not None:
            trace.admitting()
        claim = exchange.claim
        key, ticket = await self.upstream.admit(skipped, stay=exchange.limited_by, claim=claim)
        metrics, pool = self.metrics, self.pool
        if not exchange.admitted:
            exchange.admitted = True
            priority = PRIORITIES[0] if claim is None else PRIORITIES[claim.rank]
            metrics.client_waited(exchange.key, priority, ticket.waited)
            if claim is not None:
                exchange.claim = replace(claim, charge=False)  # counted once per request
        limiter = key.limiter
        metrics.rate_limit_wait_child.observe(ticket.waited)
        outcome: Outcome | None = None  # None: nothing reached the upstream
        metrics.queued.inc()
        try:
            queue_wait = await pool.acquire()
        except BaseException:
            self.upstream.release(key)
            await limiter.record(ticket, outcome)
            raise
        finally:
            metrics.queued.dec()
        metrics.queue_wait_child.observe(queue_wait)
        metrics.in_flight.inc()
        outcome = Outcome.NETWORK
        told: float | None = None
        headers = upstream_request_headers(
            client_headers, route.dialect, key.auth, exchange.request_id
        )
        metrics.key_attempt(key.alias)
        if trace is not None:
            headers = trace.attempt(
                route, exchange.method, ticket, headers, pool=limiter.pool, key=key.alias
            )
        try:
            async with open_response(
                self.session, exchange.method, route.url, headers, request.body
            ) as response:
                status = response.status
                told = told_rate(response.raw_headers)
                if status == 429 or status >= 500:
                    answer = await self._read_error(response)
                    outcome = classify_status(status, answer.body)
                    self.metrics.upstream_error(outcome.value)
                    if outcome in RETRYABLE:
                        raise RetryableAttempt(outcome, answer=answer)
                    if outcome is Outcome.RATE_QUOTA and self.upstream.parks:
                        await self._refused_by_key(key, answer)
                    await self._pass_answer(send, exchange, answer)
                    return
                outcome = Outcome.OK if status < 400 else Outcome.CLIENT_ERROR
                await self._respond(response, send, exchange, route, request)
        except (UpstreamUnavailable, UpstreamTimeout) as err:
            outcome = Outcome.NETWORK
            self.failures.failed(route.url, err)
            self.metrics.upstream_error(
                "timeout" if isinstance(err, UpstreamTimeout) else "network"
            )
            raise RetryableAttempt(Outcome.NETWORK, error=err) from err
        except RetryableAttempt as failed:
            outcome = failed.outcome
            if trace is not None:
                trace.retryable(failed)
            if outcome in LIMITED:
                exchange.limited_by = key.alias
            if failed.answer is None:
                # An answer that broke off (or was empty) before anything reached the
                # client; a 429 or 5xx answer was counted when it was read.
                timed_out = isinstance(failed.error, UpstreamTimeout)
                self.metrics.upstream_error("timeout" if timed_out else "network")
            raise
        finally:
            metrics.in_flight.dec()
            pool.release()
            self.upstream.release(key)
            await limiter.record(ticket, outcome, told=told)
            if trace is not None:
                trace.attempt_done(exchange, outcome)

    async def _refused_by_key(self, key: UpstreamKey, answer: UpstreamAnswer) -> None:
        """A quota-class answer: park the key (unless only the model was refused) and
        raise KeyRefused so the request moves to another key; return when the code says
        nothing about the key (the answer passes to the client)."""
        verdict = key_verdict(answer.body, answer.retry_hint())
        if verdict is None:
            return
        if verdict.park:
            await self.upstream.park(key, verdict.seconds, verdict.reason)
        raise KeyRefused(key.alias, answer, parked=verdict.park)

    async def _read_error(self, response: aiohttp.ClientResponse) -> UpstreamAnswer:
        try:
            body = await response.content.read(MAX_ERROR_BODY)
        except UPSTREAM_ERRORS as exc:
            raise translate(exc) from exc
        return UpstreamAnswer(response.status, tuple(response.raw_headers), body)

    def _count_retry(self, failed: RetryableAttempt) -> None:
        self.metrics.retry(failed.outcome.value)

    async def _respond(
        self,
        response: aiohttp.ClientResponse,
        send: Any,
        exchange: Exchange,
        route: Route,
        request: Request,
    ) -> None:
        """Pass an answer on: whole when small and sized, else chunk by chunk as it arrives."""
        status = response.status
        content_type = response.headers.get("Content-Type", "")
        is_sse = content_type.startswith("text/event-stream")
        length = response.content_length
        if not is_sse and length is not None and length <= WHOLE_BODY_LIMIT:
            await self._respond_whole(response, send, exchange, route, request)
            return

        chunks = response.content.iter_any()
        # Nothing is sent before the first chunk is in, so an answer that breaks off (or
        # ends) before it can still be retried.
        try:
            first = await anext(chunks, b"")
        except UPSTREAM_ERRORS as exc:
            raise RetryableAttempt(Outcome.NETWORK, error=translate(exc)) from exc
        if not first and status == 200 and request.counted:
            raise RetryableAttempt(
                Outcome.NETWORK, error=UpstreamUnavailable("the upstream answered nothing")
            )

        tap = (
            self.accounting.tap(route, request, exchange.facts) if is_sse and status < 300 else None
        )
        exchange.tap = tap
        keep_length = tap is None or not tap.strip_usage
        headers = client_response_headers(
            response.raw_headers, exchange.request_id, keep_length=keep_length
        )
        if is_sse:
            headers.append((b"x-accel-buffering", b"no"))
            if "Cache-Control" not in response.headers:
                headers.append((b"cache-control", b"no-cache"))
        read_json = (
            tap is None
            and self.accounting.reads_answer(request, exchange.facts)
            and status < 300
            and "json" in content_type
        )
        json_body = JsonBody() if read_json else None

        exchange.status, exchange.origin = status, ORIGIN_UPSTREAM
        await send({"type": "http.response.start", "status": status, "headers": headers})
        exchange.started = True
        chunk = first
        try:
            while chunk:
                out = tap.feed(chunk) if tap is not None else chunk
                if json_body is not None:
                    json_body.feed(chunk)
                if out:
                    if exchange.ttfb is None:
                        exchange.ttfb = time.perf_counter() - exchange.start
                    exchange.size += len(out)
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                chunk = await anext(chunks, b"")
        except UPSTREAM_ERRORS as exc:
            # Bytes are out: end the stream cleanly and count the break.
            kind = "timeout" if isinstance(translate(exc), UpstreamTimeout) else "truncated"
            self.metrics.upstream_error(kind)
            log.warning("upstream broke off a response: request_id=%s", exchange.request_id)
        tail = tap.flush() if tap is not None else b""
        exchange.size += len(tail)
        exchange.finished = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        if json_body is not None and json_body.data:
            exchange.body_usage, exchange.output_text = self.accounting.usage_of_json(
                route.dialect, json_body, exchange.facts
            )

    async def _respond_whole(
        self,
        response: aiohttp.ClientResponse,
        send: Any,
        exchange: Exchange,
        route: Route,
        request: Request,
    ) -> None:
        try:
            body = await response.read()
        except UPSTREAM_ERRORS as exc:
            raise RetryableAttempt(Outcome.NETWORK, error=translate(exc)) from exc
        status = response.status
        if not body and status == 200 and request.counted:
            raise RetryableAttempt(
                Outcome.NETWORK, error=UpstreamUnavailable("the upstream answered nothing")
            )
        headers = client_response_headers(
            response.raw_headers, exchange.request_id, keep_length=True
        )
        exchange.status, exchange.origin = status, ORIGIN_UPSTREAM
        await send({"type": "http.response.start", "status": status, "headers": headers})
        exchange.started = True
        exchange.ttfb = time.perf_counter() - exchange.start
        exchange.size = len(body)
        exchange.finished = True
        await send({"type": "http.response.body", "body": body, "more_body": False})
        if status < 300 and body and self.accounting.reads_answer(request, exchange.facts):
            exchange.body_usage, exchange.output_text = self.accounting.usage_of_body(
                route.dialect, body, exchange.facts
            )

    async def _pass_answer(self, send: Any, exchange: Exchange, answer: UpstreamAnswer) -> None:
        """Pass an upstream error answer on as it came (a quota 429 gains a Retry-After)."""
        headers = client_response_headers(answer.headers, exchange.request_id, keep_length=False)
        headers.append((b"content-length", b"%d" % len(answer.body)))
        if answer.status == 429 and not any(name == b"retry-after" for name, _ in headers):
            hint = answer.retry_hint()
            if hint is not None:
                headers.append((b"retry-after", b"%d" % max(1, math.ceil(hint))))
        exchange.status, exchange.origin = answer.status, ORIGIN_UPSTREAM
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        exchange.started = True
        exchange.ttfb = time.perf_counter() - exchange.start
        exchange.size = len(answer.body)
        exchange.finished = True
        await send({"type": "http.response.body", "body": answer.body, "more_body": False})

    async def _refuse(self, send: Any, exchange: Exchange, err: ProxyError) -> None:
        if exchange.trace is not None:
            exchange.trace.refused(err)
        if isinstance(err, RateLimited):
            self.metrics.rate_limited.inc()
        if exchange.started:
            if not exchange.finished:
                exchange.finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        exchange.status, exchange.origin = err.status, ORIGIN_PROXY
        self.metrics.refusal(err.code)
        reason = f"client_budget_{err.budget}" if isinstance(err, BudgetExceeded) else err.code
        self.metrics.client_refused(exchange.key, reason)
        body = err.body(exchange.dialect)
        headers = [*err.headers(), (b"x-request-id", exchange.request_id.encode())]
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        exchange.started = exchange.finished = True
        exchange.size = len(body)
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _count_tokens(self, exchange: Exchange) -> None:
        """Exact usage when the upstream reported it, else an estimate for a successful answer."""
        request = exchange.request
        if (
            not self.accounting.enabled
            or request is None
            or not request.counted
            or not 200 <= exchange.status < 300
        ):
            return
        tap = exchange.tap
        usage = tap.account.usage if tap is not None else exchange.body_usage
        if usage is not None:
            exchange.usage, exchange.usage_source = usage, "usage"
        elif request.info is not None:
            if tap is not None:
                text, overflow = tap.account.output_text(), tap.account.overflow_chars
            else:
                text, overflow = exchange.output_text, 0
            exchange.usage = await self.accounting.estimate(
                exchange.dialect, request, text, overflow
            )
            exchange.usage_source = "estimate"
        if exchange.usage is not None:
            self.metrics.observe_tokens(
                exchange.model, exchange.key, exchange.usage, exchange.usage_source
            )
            claim = exchange.claim
            if claim is not None and claim.budgets.tokens_per_day is not None:
                usage = exchange.usage
                self.upstream.add_tokens(claim.client, usage.input + usage.output)

    def _record(self, exchange: Exchange) -> None:
        if exchange.disconnected and not exchange.finished:
            exchange.status = STATUS_CLIENT_CLOSED
        duration = time.perf_counter() - exchange.start
        self.metrics.observe_request(
            exchange.method,
            exchange.template,
            exchange.status,
            exchange.model,
            exchange.key,
            duration,
            exchange.ttfb,
            exchange.size,
            exchange.origin or (ORIGIN_CLIENT if exchange.disconnected else ORIGIN_PROXY),
        )
        trace = exchange.trace
        if trace is not None:
            trace.end(exchange, duration)
        if self.access_log is not None:
            usage = exchange.usage
            self.access_log.record(
                exchange.request_id,
                exchange.method,
                exchange.template,
                exchange.status,
                duration,
                exchange.model,
                usage.input if usage else 0,
                usage.output if usage else 0,
                exchange.usage_source or "none",
                trace.trace_id if trace is not None else "",
            )
