"""Spans exported by a child process: the SDK's batch span processor and OTLP exporter,
fed compact records over a pipe, so that building protobuf never holds the GIL of the
process that serves requests (ADR 0019).

The OTLP exporters build every attribute as protobuf objects in Python: about 100 µs per
span of the proxy's, on a thread that holds the GIL beside the event loop. Here the
serving process only turns a request's finished spans into tuples of plain values
(``SpanRecord``), pickles them and appends the bytes to a bounded list; a thread of its
own writes the list to the child every HANDOFF_SECONDS (the pipe's write releases the
GIL). The child
(``python -m zai_proxy.shared.span_export``) rebuilds each record as the SDK's
``ReadableSpan`` (the attribute limits of OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT and
OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT applied as the SDK's spans apply them) and gives it to
the SDK's ``BatchSpanProcessor`` with the OTLP exporter of OTEL_EXPORTER_OTLP_PROTOCOL:
the OTEL_BSP_* variables, endpoint, headers, timeouts and certificates mean what they
always mean, read by the SDK in the child.

Memory stays bounded whatever the endpoint does: the parent's list holds at most
OTEL_BSP_MAX_QUEUE_SIZE spans (beyond it spans are dropped and counted, and the log says
so once a minute), the pipe its kernel buffer, the child its batch processor's queue (the
same bound, dropping as the SDK drops). Nothing here waits for the child on the event
loop. The child lives as long as its pipe: at the parent's shutdown (or death) it reads
the end of the pipe, exports what it holds within SHUTDOWN_SECONDS, and exits; the parent
kills it if it takes longer. A child that died is started again (at most once per
RESTART_SECONDS); what was in flight is lost and counted.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

log = logging.getLogger("zai_proxy.telemetry")

# A finished span as plain values: trace id, span id, parent span id (0: a root), whether
# the parent is remote, trace flags, tracestate header ("" for none), name, kind
# (SpanKind's value), start and end (unix ns), attributes, status code (StatusCode's
# value), status description, events as (name, unix ns, attributes).
SpanRecord = tuple[
    int,
    int,
    int,
    bool,
    int,
    str,
    str,
    int,
    int,
    int,
    dict[str, Any],
    int,
    "str | None",
    "tuple[tuple[str, int, dict[str, Any]], ...]",
]

HANDOFF_SECONDS = 0.05  # the longest a finished span waits in the serving process
RESTART_SECONDS = 5.0
DEFAULT_MAX_QUEUE = 2048  # OTEL_BSP_MAX_QUEUE_SIZE's default
QUEUE_FULL_LOG_SECONDS = 60.0
_HEADER = struct.Struct("<I")  # each frame on the pipe: its length, then its pickle
_PIPE_BYTES = 1 << 20  # the pipe's buffer, where Linux lets it be raised (F_SETPIPE_SZ)


def max_queue(environ: Mapping[str, str]) -> int:
    """OTEL_BSP_MAX_QUEUE_SIZE, as the SDK reads it (a bad value: the default)."""
    try:
        value = int(environ.get("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE))
    except ValueError:
        return DEFAULT_MAX_QUEUE
    return value if value > 0 else DEFAULT_MAX_QUEUE


class SpanExportProcess:
    """The child process that exports a service's spans, and the bounded list that feeds it."""

    def __init__(
        self,
        service_name: str,
        scope: tuple[str, str],
        environ: Mapping[str, str],
    ) -> None:
        """``scope``: the instrumentation scope's name and version; ``environ``: the
        OTEL_* variables the child's SDK reads (laid over this process's environment)."""
        self._argv = [
            sys.executable,
            "-m",
            "zai_proxy.shared.span_export",
            service_name,
            *scope,
            logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        ]
        self._environ = {**os.environ, **environ}
        self._limit = max_queue(environ)
        self._wake_at = max(1, self._limit // 2)
        # Pickled at once (the records' dicts and tuples die young, which the garbage
        # collector's youngest generation prefers to 50 ms of survivors): the frames for
        # the pipe, and the spans they hold.
        self._pending: list[bytes] = []
        self._spans = 0
        self._lock = threading.Lock()  # add on the event loop, take on the handoff thread
        self._wake = threading.Event()
        self._stopping = False
        self._dropped = 0
        self._next_log = 0.0
        self._started = 0.0
        self._child: subprocess.Popen[bytes] | None = None
        self._start_child()
        self._thread = threading.Thread(target=self._run, name="zai-span-handoff", daemon=True)
        self._thread.start()

    def add(self, records: Sequence[SpanRecord]) -> None:
        """Queue finished spans for export: a pickle and an append under a lock, never a
        wait."""
        count = len(records)
        data = pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._spans + count > self._limit:
                self._dropped += count
                return
            self._spans += count
            self._pending.append(_HEADER.pack(len(data)) + data)
            wake = self._spans >= self._wake_at
        if wake:
            self._wake.set()

    def _start_child(self) -> None:
        self._started = time.monotonic()
        self._child = subprocess.Popen(  # noqa: S603 (our own module, by our interpreter)
            self._argv, stdin=subprocess.PIPE, env=self._environ
        )
        resize = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
        if resize is not None and self._child.stdin is not None:
            # Room for a few batches while the child is busy: the handoff thread waits less.
            with contextlib.suppress(OSError):  # over pipe-max-size: the default will do
                fcntl.fcntl(self._child.stdin.fileno(), resize, _PIPE_BYTES)

    def _run(self) -> None:
        while True:
            self._wake.wait(HANDOFF_SECONDS)
            self._wake.clear()
            with self._lock:
                frames, self._pending = self._pending, []
                spans, self._spans = self._spans, 0
                stopping = self._stopping
            if frames:
                self._send(frames, spans)
            self._log_drops()
            if stopping:
                return

    def _send(self, frames: list[bytes], spans: int) -> None:
        child = self._child
        if child is None or child.poll() is not None:
            if self._stopping or time.monotonic() - self._started < RESTART_SECONDS:
                self._dropped += spans
                return
            log.warning("the span exporter process exited (%s): starting another", _code(child))
            self._start_child()
            child = self._child
        assert child is not None and child.stdin is not None
        try:
            child.stdin.write(b"".join(frames))
            child.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            self._dropped += spans

    def _log_drops(self) -> None:
        if not self._dropped:
            return
        now = time.monotonic()
        if now < self._next_log:
            return
        self._next_log = now + QUEUE_FULL_LOG_SECONDS
        dropped, self._dropped = self._dropped, 0
        log.warning(
            "span queue full (OTEL_BSP_MAX_QUEUE_SIZE): dropping spans; %d dropped "
            "before the exporter process took them",
            dropped,
        )

    def shutdown(self, timeout: float) -> None:
        """Hand over what is queued, let the child export it and exit (``timeout``
        seconds for all of it; then the child is killed)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        child = self._child
        if child is None:
            return
        if child.stdin is not None:
            with contextlib.suppress(OSError):
                child.stdin.close()
        try:
            child.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class SpanForwarder(SpanProcessor):
    """Sends the spans of the SDK's tracer to the export process (a service's few spans
    made the usual way; the proxy's own records skip the SDK's span objects)."""

    def __init__(self, export: SpanExportProcess) -> None:
        self._export = export

    def on_end(self, span: ReadableSpan) -> None:
        """A finished span: its record to the export process, if it was sampled."""
        if span.context is not None and span.context.trace_flags.sampled:
            self._export.add((record_of(span),))


class _FixedResource(Resource):
    """A resource whose hash is computed once: the OTLP encoder groups spans by resource,
    and ``Resource.__hash__`` serialises the attributes to JSON at every call."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or super().__eq__(other)


def _code(child: subprocess.Popen[bytes] | None) -> str:
    return "not started" if child is None else f"status {child.returncode}"


def record_of(span: ReadableSpan) -> SpanRecord:
    """A span of the SDK's as a record (for spans made through the SDK's tracer)."""
    context, parent = span.context, span.parent
    assert context is not None
    status = span.status
    return (
        context.trace_id,
        context.span_id,
        parent.span_id if parent is not None else 0,
        parent.is_remote if parent is not None else False,
        int(context.trace_flags),
        context.trace_state.to_header() if context.trace_state else "",
        span.name,
        span.kind.value,
        span.start_time or 0,
        span.end_time or 0,
        dict(span.attributes or {}),
        status.status_code.value,
        status.description,
        tuple((event.name, event.timestamp, dict(event.attributes or {})) for event in span.events),
    )


def _read_batches(stream: IO[bytes]) -> Any:
    """The frames of records on ``stream`` (a request's spans each), until its end."""
    while True:
        header = stream.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        (size,) = _HEADER.unpack(header)
        data = stream.read(size)
        if len(data) < size:
            return
        yield pickle.loads(data)  # noqa: S301 (our own parent's pipe)


def serve(service_name: str, scope_name: str, scope_version: str, stream: IO[bytes]) -> None:
    """The child: rebuild each record as the SDK's span and export it, until the pipe ends."""
    from opentelemetry.attributes import BoundedAttributes
    from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState
    from opentelemetry.trace.status import Status, StatusCode
    from opentelemetry.util.types import Attributes

    from zai_proxy.shared.telemetry import SHUTDOWN_SECONDS, resource_of, span_exporter

    environ = os.environ
    resource = _FixedResource(resource_of(service_name))
    scope = InstrumentationScope(scope_name, scope_version)
    processor = BatchSpanProcessor(span_exporter(environ))
    limits = SpanLimits()
    kinds = {kind.value: kind for kind in SpanKind}
    statuses = {code.value: Status(code) for code in StatusCode}
    states: dict[str, TraceState] = {}
    length = limits.max_span_attribute_length

    def bounded(attributes: dict[str, Any], count: int | None) -> Attributes:
        # The records' values are the SDK's kinds already (the proxy sets str, bool, int,
        # float and lists of str; a span of the SDK's was cleaned when it was set): only
        # the OTEL_*_LIMIT variables are left to apply, as the SDK's span applies them.
        if length is None and (count is None or len(attributes) <= count):
            return attributes
        return BoundedAttributes(count, attributes, immutable=True, max_value_len=length)

    for batch in _read_batches(stream):
        for record in batch:
            (trace_id, span_id, parent_id, remote, flags, state_header, name, kind,
             start, end, attributes, code, description, events) = record  # fmt: skip
            state = None
            if state_header:
                state = states.get(state_header)
                if state is None:
                    state = TraceState.from_header([state_header])
                    if len(states) < 64:
                        states[state_header] = state
            trace_flags = TraceFlags(flags)
            context = SpanContext(trace_id, span_id, False, trace_flags, state)
            parent = (
                SpanContext(trace_id, parent_id, remote, trace_flags, state) if parent_id else None
            )
            span = ReadableSpan(
                name=name,
                context=context,
                parent=parent,
                resource=resource,
                attributes=bounded(attributes, limits.max_span_attributes),
                events=tuple(
                    Event(event, bounded(values, limits.max_event_attributes), stamp)
                    for event, stamp, values in events
                ),
                kind=kinds[kind],
                status=statuses[code] if not description else Status(StatusCode(code), description),
                start_time=start,
                end_time=end,
                instrumentation_scope=scope,
            )
            processor.on_end(span)
    processor.force_flush(int(SHUTDOWN_SECONDS * 1000))
    processor.shutdown()


def main(argv: list[str]) -> None:
    """``python -m zai_proxy.shared.span_export SERVICE SCOPE VERSION LEVEL``: the
    child, its records on stdin."""
    from zai_proxy.shared.logs import configure_logging
    from zai_proxy.shared.telemetry import quiet_queue_full

    # Its life is the pipe's: a signal to the process group is the parent's to act on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    service_name, scope_name, scope_version, level = argv
    configure_logging(level)
    quiet_queue_full()
    serve(service_name, scope_name, scope_version, sys.stdin.buffer)


if __name__ == "__main__":
    main(sys.argv[1:])
