"""The live stream: new collector rounds found in the database, fanned out to SSE clients.

The dashboard runs apart from the collector, so it learns of a new round by polling the
finest resolution's rows once a second (``Broadcaster``). Each poll's new rounds go to
every client as one batch on the client's own bounded queue, without waiting: a client
whose queue is full is too slow (its socket buffers are full and it still falls
behind), and is dropped at once, even in the middle of a write, so it never slows the
others or holds its slot.

A client that reconnects with ``Last-Event-ID`` first gets the rounds after that id from
the database (at most ``REPLAY_SECONDS`` back), then the live ones. It subscribes before
it reads the replay, so a round lands in the replay, in the live queue, or in both;
``Sent`` drops what the client has had already, so the stream has neither gap nor repeat.

Event ids are a round's start time in milliseconds. Rarely, one round's variants are
written in two transactions (a buffer flush split between two batches): the late
variants then follow as a second event with the same id, carrying only those variants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from zai_proxy.collector.history import StorageError
from zai_proxy.dashboard_api.points import Round, event_id
from zai_proxy.dashboard_api.queries import HistoryReader
from zai_proxy.shared.tasks import cancel_and_wait

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("zai_proxy.dashboard")

# How far back a reconnecting client is replayed (and how far back a poll looks).
REPLAY_SECONDS = 15 * 60.0
HEARTBEAT = ServerSentEvent(comment="heartbeat", sep="\n")


class DroppedClientFilter(logging.Filter):
    """Hides uvicorn's error for a response cut short: here, only a dropped client's."""

    MESSAGE = "ASGI callable returned without completing response."

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.MESSAGE


class TooManyClients(Exception):
    """Every SSE slot is taken."""


class Subscription:
    """One SSE client's queue of round batches; dropped when it overflows."""

    def __init__(
        self, backlog: int, release: Callable[[Subscription], None], client: str = ""
    ) -> None:
        self.client = client  # the peer's address, for the log
        self.queue: asyncio.Queue[list[Round]] = asyncio.Queue(backlog)
        self.dropped = False
        self.sent = 0  # snapshot events sent to it
        self.on_drop: Callable[[], object] | None = None
        self._release = release

    def offer(self, rounds: list[Round]) -> bool:
        """Queue a batch without waiting; False (and dropped) when the queue is full."""
        try:
            self.queue.put_nowait(rounds)
        except asyncio.QueueFull:
            self.dropped = True
            if self.on_drop is not None:
                self.on_drop()
            return False
        return True

    def close(self) -> None:
        """Give the client's slot back."""
        self._release(self)


class Broadcaster:
    """Polls the database for new rounds and offers each batch to every subscriber."""

    def __init__(
        self,
        reader: HistoryReader,
        *,
        poll_interval: float,
        backlog: int,
        max_clients: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.poll_interval = poll_interval
        self.backlog = backlog
        self.max_clients = max_clients
        self.clock = clock
        self.subscribers: set[Subscription] = set()
        self.dropped = 0  # slow clients dropped since start
        self._primed = False  # the cursor was read from the database
        self._cursor: float | None = None  # start of the newest round sent
        self._sent_at_cursor: set[str] = set()  # its variants sent so far
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start polling."""
        self._task = asyncio.create_task(self._run(), name="dashboard-broadcaster")

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    def subscribe(self, client: str = "") -> Subscription:
        """A new client's subscription; TooManyClients when every slot is taken."""
        if len(self.subscribers) >= self.max_clients:
            raise TooManyClients(f"{self.max_clients} live clients already")
        subscription = Subscription(self.backlog, self.subscribers.discard, client)
        self.subscribers.add(subscription)
        return subscription

    async def poll(self) -> list[Round]:
        """Read the rounds that are new since the last poll, and offer them to everyone."""
        if not self._primed:
            # Rounds before the dashboard started are history, not news.
            newest = await self.reader.newest_round()
            if newest is not None:
                rounds = await self.reader.rounds_from(newest)
                self._cursor, self._sent_at_cursor = rounds[-1].ts, set(rounds[-1].points)
            self._primed = True
            return []
        start = self.clock() - REPLAY_SECONDS
        if self._cursor is not None:
            start = max(start, self._cursor)
        fresh = []
        for round_ in await self.reader.rounds_from(start):
            self.reader.saw(round_.points)
            if self._cursor is not None and round_.id == event_id(self._cursor):
                late = {v: p for v, p in round_.points.items() if v not in self._sent_at_cursor}
                if not late:
                    continue
                round_ = Round(round_.ts, late)
                self._sent_at_cursor |= late.keys()
            else:
                self._cursor, self._sent_at_cursor = round_.ts, set(round_.points)
            fresh.append(round_)
        if fresh:
            self.publish(fresh)
        return fresh

    def publish(self, rounds: list[Round]) -> None:
        """Offer a batch to every subscriber; the ones that cannot take it are dropped."""
        for subscription in list(self.subscribers):
            if not subscription.offer(rounds):
                self.subscribers.discard(subscription)
                self.dropped += 1
                log.warning(
                    "dropped a slow SSE client %s: %d batches of rounds behind",
                    subscription.client or "(unknown)",
                    self.backlog,
                )

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except StorageError as exc:
                if not self._failing:
                    log.warning("cannot read new rounds, retrying: %s", exc)
                self._failing = True
            else:
                if self._failing:
                    log.info("reading new rounds again")
                self._failing = False
            await asyncio.sleep(self.poll_interval)


class Sent:
    """What a client has been sent: the newest round's id and which of its variants."""

    def __init__(self, last_id: int | None = None) -> None:
        self.last_id = last_id
        self.variants: set[str] | None = None  # None: all of them

    def unsent(self, round_: Round) -> Round | None:
        """The part of a round the client has not had (None: nothing), marked as sent."""
        if self.last_id is not None and round_.id < self.last_id:
            return None
        if round_.id == self.last_id:
            if self.variants is None:
                return None
            late = {v: p for v, p in round_.points.items() if v not in self.variants}
            if not late:
                return None
            self.variants |= late.keys()
            return Round(round_.ts, late)
        self.last_id, self.variants = round_.id, set(round_.points)
        return round_


def snapshot_event(round_: Round) -> ServerSentEvent:
    """The ``snapshot`` event of a round."""
    data = orjson.dumps(round_.payload()).decode()
    return ServerSentEvent(data, event="snapshot", id=str(round_.id), sep="\n")


async def stream(
    subscription: Subscription,
    reader: HistoryReader,
    last_id: int | None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[ServerSentEvent]:
    """A client's events: the rounds it missed after ``last_id``, then the live ones."""
    sent = Sent(last_id)
    if last_id is not None:
        start = max(last_id / 1000, clock() - REPLAY_SECONDS)
        try:
            missed = await reader.rounds_from(start)
        except StorageError as exc:
            # End the stream: the client reconnects (with its id) and the replay is retried.
            log.warning("cannot replay rounds after id %d: %s", last_id, exc)
            return
        for round_ in missed:
            if (unsent := sent.unsent(round_)) is not None:
                subscription.sent += 1
                yield snapshot_event(unsent)
    while not subscription.dropped:
        for round_ in await subscription.queue.get():
            if (unsent := sent.unsent(round_)) is not None:
                subscription.sent += 1
                yield snapshot_event(unsent)


def client_span(tracer: Tracer, client: str, resume: int | None) -> Span:
    """The span of one SSE client's connection, started now (ended by its EventStream)."""
    from opentelemetry.trace import SpanKind  # with tracing on only

    attributes: dict[str, str | int] = {"http.request.method": "GET", "http.route": "/api/events"}
    if client:
        attributes["client.address"] = client
    if resume is not None:
        attributes["zai_proxy.sse.resumed_after"] = resume
    return tracer.start_span("GET /api/events", kind=SpanKind.SERVER, attributes=attributes)


class EventStream(EventSourceResponse):
    """An SSE response that ends at once when its subscription is dropped, and frees it."""

    def __init__(
        self,
        subscription: Subscription,
        content: AsyncIterator[Any],
        span: Span | None = None,
        **kwargs: Any,
    ):
        """``span``: the client's span (client_span), ended with the response."""
        super().__init__(content, **kwargs)
        self.subscription = subscription
        self.span = span

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # A dropped client may be stuck in a write to a full socket: cancelling the
            # whole response is the only way out. The server then closes the connection.
            with anyio.CancelScope() as cancel:
                self.subscription.on_drop = cancel.cancel
                if not self.subscription.dropped:
                    await super().__call__(scope, receive, send)
        finally:
            self.subscription.close()
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            if self.span is not None:
                self.span.set_attributes(
                    {
                        "zai_proxy.sse.events": self.subscription.sent,
                        "zai_proxy.sse.dropped": self.subscription.dropped,
                    }
                )
                self.span.end()
