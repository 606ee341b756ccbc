"""The proxy's HTTP/1.1 connection: uvicorn's httptools protocol, with the bounds and the
strictness a gateway's front door needs (see the class)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from zai_proxy.proxy.errors import (
    REFUSED_CODE,
    REFUSED_STATUS,
    MalformedRequest,
    ProxyError,
    RequestHeadTooLarge,
    RequestTimeout,
)
from zai_proxy.proxy.headers import request_id_of

log = logging.getLogger("zai_proxy.proxy")

# The defaults of MAX_REQUEST_HEADER_BYTES and CLIENT_HEADER_TIMEOUT.
DEFAULT_MAX_HEAD_BYTES = 64 * 1024
DEFAULT_HEAD_TIMEOUT = 60.0
# Seconds a refused connection keeps reading (and dropping) input before it is closed.
REFUSAL_LINGER_SECONDS = 2.0
CONNECTION_CLOSE = (b"connection", b"close")


class RequestRefused(Exception):
    """Raised in a parser callback to stop parsing a request that has been answered."""


class HardenedProtocol(HttpToolsProtocol):
    """httptools protocol that keeps absolute-form targets visible to the router and bounds
    what a client may hold before its request reaches the application.

    httptools reduces ``GET http://other.host/x`` to the path ``/x``; the proxy must see
    the original target to refuse it, so the raw target replaces raw_path when it does
    not start with a slash.

    Neither httptools nor uvicorn limits a request head: a client could send megabytes of
    headers (buffered in memory, then forwarded upstream) or trickle them forever, each
    such connection holding memory and a file descriptor. Here a head larger than
    ``max_head_bytes`` is answered 431, and one that is not complete ``head_timeout``
    seconds after its first byte (a connection's first request: after the connection
    opened) is answered 408; either way the connection is closed. A connection that sends
    nothing at all is closed silently after ``head_timeout``. The size counts every read
    that ends while a head is incomplete, and, once a head is complete, its target and
    fields (a head that came in one read was never incomplete after one).

    The fields of a chunked body's trailer are dropped: uvicorn would add them to the
    request's headers (forwarded upstream as if the client had sent them first) with no
    bound on how many. They count against ``max_head_bytes`` all the same (431): httptools
    gathers a field by concatenation until it ends, so one field that never ends would
    cost memory and quadratic time, not only a connection.

    What the parser refuses is answered 400 in the proxy's JSON error format (uvicorn's
    answer is plain text), and the connection is closed; so are the leniencies of RFC 9112
    that httptools allows: a request line without a version (read as HTTP/0.9, its next
    lines as headers), and an HTTP/1.1 request without exactly one Host (3.2).

    An answer that starts before its request's body is complete (401, 413, a refused
    target, a 503 before reading) says ``Connection: close`` and closes the connection
    once it is out: uvicorn would read and drop the rest of the body to reuse the
    connection, for as long as the client cares to send it (a chunked body has no end),
    and its client would learn of the close only from the EOF.
    """

    def __init__(
        self,
        *args: Any,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes = max_head_bytes
        self.head_timeout = head_timeout
        self._head_open = True  # a request head is (or may be) arriving
        self._head_started = False  # ... and its first byte is in
        self._head_bytes = 0  # of reads that ended with the head incomplete
        self._field_bytes = 0  # of the head's fields, names and values
        self._head_timer: asyncio.TimerHandle | None = None
        self._discarding = False  # refused: what still arrives is dropped until the close
        self._deferred: ProxyError | None = None  # a refusal that waits for an answer ahead
        self._hosts = 0  # Host fields of the head
        # Between a chunk's size line and its first byte of data (or its end): the last
        # chunk's trailer comes here. Chunk events count parser progress within one read.
        self._chunk_open = False
        self._chunk_events = 0
        self._trailer_bytes = 0
        self._close_after: object = None  # the cycle whose early answer promised a close

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        # A read that starts and ends inside the last chunk, with no chunk data or end in
        # between, is trailer: its bytes sit in httptools' unfinished field.
        in_chunk, events = self._chunk_open, self._chunk_events
        super().data_received(data)
        if self._discarding or self.transport.is_closing():
            return  # refused (in a parser callback, or before)
        if self._head_open and self._head_started:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(self._head_too_large())
        elif in_chunk and self._chunk_open and events == self._chunk_events:
            self._trailer_bytes += len(data)
            if self._trailer_bytes > self.max_head_bytes:
                self._refuse(self._trailer_too_large())

    def send_400_response(self, msg: str) -> None:
        # The parser refused the input. After a refusal of ours (which stopped the parser)
        # the answer is out, or cannot be sent.
        if not self._discarding and not self.transport.is_closing():
            self._refuse(MalformedRequest("the request is not well-formed HTTP/1.1"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = self._head_started = True
        self._head_bytes = self._field_bytes = self._trailer_bytes = self._hosts = 0
        self._chunk_open = False
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_open:
            self._field_bytes += len(name) + len(value)
            if len(name) == 4 and name.lower() == b"host":
                self._hosts += 1
            super().on_header(name, value)
            return
        # A trailer field: dropped, but counted.
        self._trailer_bytes += len(name) + len(value)
        if self._trailer_bytes > self.max_head_bytes:
            self._refuse(self._trailer_too_large())
            raise RequestRefused

    def on_headers_complete(self) -> None:
        self._head_open = self._head_started = False
        self._stop_head_timer()
        refusal = self._head_refusal()
        if refusal is not None:
            self._refuse(refusal)
            raise RequestRefused  # stops the parser: the application never sees the request
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # else upgraded, or not served
            cycle.send = self._closing_early(cycle)  # type: ignore[method-assign,assignment]
        if "raw_path" in self.scope and not self.url.startswith(b"/"):
            self.scope["raw_path"] = self.url.partition(b"?")[0]

    def _head_refusal(self) -> ProxyError | None:
        """Why a complete head is refused before the application sees it, if it is."""
        if len(self.url) + self._field_bytes > self.max_head_bytes:
            return self._head_too_large()
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            return MalformedRequest("the request line must end with HTTP/1.1 or HTTP/1.0")
        if self._hosts > 1 or (self._hosts == 0 and version == "1.1"):
            return MalformedRequest("an HTTP/1.1 request must carry exactly one Host header")
        return None

    def on_chunk_header(self) -> None:
        self._chunk_open = True
        self._chunk_events += 1

    def on_chunk_complete(self) -> None:
        self._chunk_open = False
        self._chunk_events += 1

    def on_body(self, body: bytes) -> None:
        self._chunk_open = False
        self._chunk_events += 1
        super().on_body(body)

    def _closing_early(self, cycle: RequestResponseCycle) -> Callable[[Any], Awaitable[None]]:
        """The cycle's send, saying ``Connection: close`` on an answer that starts before
        the request's body is complete; the close itself is on_response_complete's. Any
        other message goes straight to uvicorn's send (no frame of its own per chunk)."""
        send = cycle.send

        def send_closing_early(message: Any) -> Awaitable[None]:
            if message["type"] != "http.response.start" or not cycle.more_body:
                return send(message)
            return self._start_closing(cycle, send, message)

        return send_closing_early

    async def _start_closing(
        self, cycle: RequestResponseCycle, send: Callable[[Any], Awaitable[None]], message: Any
    ) -> None:
        headers = list(message.get("headers", ()))
        if CONNECTION_CLOSE not in headers:
            headers.append(CONNECTION_CLOSE)
        await send({**message, "headers": headers})
        # uvicorn would close the socket the moment the answer is out, and unread input
        # would turn the close into a reset: the close follows a linger instead.
        cycle.keep_alive = True
        self._close_after = cycle

    def on_response_complete(self) -> None:
        if self._deferred is not None and not self.pipeline and not self.transport.is_closing():
            self.server_state.total_requests += 1
            self._answer_and_close(self._deferred)
            return
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.response_complete  # this answer's cycle, not a pipelined one's
            and (cycle.more_body or cycle is self._close_after)
            and not self.transport.is_closing()
        ):
            self.server_state.total_requests += 1
            self._linger_and_close()
            return
        super().on_response_complete()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_large(self) -> RequestHeadTooLarge:
        return RequestHeadTooLarge(
            f"request target and headers are larger than {self.max_head_bytes} bytes"
        )

    def _trailer_too_large(self) -> RequestHeadTooLarge:
        return RequestHeadTooLarge(
            f"the chunked body's trailer is larger than {self.max_head_bytes} bytes"
        )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._head_open or self.transport.is_closing():
            return
        if not self._head_started:
            self.transport.close()  # connected and never said a word: nothing to answer
            return
        self._refuse(
            RequestTimeout(f"the request head did not arrive within {self.head_timeout:g} s")
        )

    def _refuse(self, err: ProxyError) -> None:
        """Answer a request the application never saw (or saw only the start of), then
        close the connection; what still arrives is dropped."""
        self._stop_head_timer()
        self._head_open = False
        self._discarding = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.more_body:
                # Behind requests read whole and still being answered: their answers go
                # out first, then this one (on_response_complete).
                self._deferred = err
                return
            if self.pipeline or cycle.response_started:
                # Answers are owed ahead of this one, or the answer to the request whose
                # body broke is under way: closing is all that can be done without
                # corrupting them.
                self.transport.close()
                return
            # The body the application is reading broke: it hears that the client left
            # (and counts this status), and this answer goes out instead of its own.
            cycle.scope[REFUSED_STATUS] = err.status  # type: ignore[literal-required]
            cycle.scope[REFUSED_CODE] = err.code  # type: ignore[literal-required]
            cycle.disconnected = True
            cycle.message_event.set()
        self._answer_and_close(err)

    def _answer_and_close(self, err: ProxyError) -> None:
        # The client's id when the refused request's head got as far as a sane one, as on
        # every answer (the parser begins a message, and new headers, at its first byte,
        # and parses nothing after a refusal).
        request_id = request_id_of(self.headers or [])
        host, port = self.client or ("?", 0)
        log.warning(
            "refused a request from %s:%d before it was read whole: %d %s (request id %s)",
            host,
            port,
            err.status,
            err.code,
            request_id,
        )
        body = err.body("openai")
        headers = [
            *(pair for pair in err.headers() if pair[0] != b"connection"),
            (b"x-request-id", request_id.encode()),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ]
        head = b"".join(b"%s: %s\r\n" % pair for pair in headers)
        self.transport.write(STATUS_LINE[err.status] + head + b"\r\n" + body)
        self._linger_and_close()

    def _linger_and_close(self) -> None:
        """End the answer with a FIN, read and drop what keeps coming for a moment, then close.

        Closing a socket with unread input resets the connection, and the reset can reach
        the client before the answer does (a client still sending a huge head or body
        would see "connection reset").
        """
        self._discarding = True
        self.flow.resume_reading()  # uvicorn pauses reading while a body waits for the app
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(REFUSAL_LINGER_SECONDS, self.transport.close)
