"""A real OTLP receiver for the tests: decodes what exporters send, as a collector would.

`with OTLPReceiver() as otlp:` serves http://127.0.0.1:<port> (OTEL_EXPORTER_OTLP_ENDPOINT),
decodes every ExportTraceServiceRequest (/v1/traces) and ExportMetricsServiceRequest
(/v1/metrics) with opentelemetry-proto, and keeps the spans and metric points it got.
``delay`` makes it a slow endpoint (each export waits that long before its answer).
``OTLPReceiver(protocol="grpc")`` serves the same over gRPC instead (the collector's
TraceService and MetricsService, from opentelemetry-proto's stubs and grpcio), for
OTEL_EXPORTER_OTLP_PROTOCOL=grpc.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

# Span.SpanKind numbers of the protocol.
KIND = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def value_of(value: AnyValue) -> Any:
    """An attribute value as Python."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    """KeyValue pairs as a dict."""
    return {pair.key: value_of(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass
class Span:
    """One received span."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    start: int
    end: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    status: int  # 0 unset, 1 ok, 2 error
    resource: dict[str, Any]
    flags: int = 0

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / 1e9


@dataclass
class Point:
    """One received histogram data point."""

    metric: str
    unit: str
    attributes: dict[str, Any]
    count: int
    sum: float
    bounds: list[float]
    counts: list[int]


@dataclass
class Received:
    """What the receiver has decoded so far."""

    spans: list[Span] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    exports: int = 0


class OTLPReceiver:
    """An OTLP/HTTP (protobuf) or OTLP/gRPC endpoint on loopback."""

    def __init__(self, delay: float = 0.0, protocol: str = "http/protobuf") -> None:
        self.delay = delay
        self.protocol = protocol
        self.received = Received()
        self._lock = threading.Lock()
        self._grpc: Any = None
        if protocol == "grpc":
            self._serve_grpc()
            return
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if receiver.delay:
                    time.sleep(receiver.delay)
                if self.path == "/v1/traces":
                    receiver._traces(ExportTraceServiceRequest.FromString(body))
                    answer = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    receiver._metrics(ExportMetricsServiceRequest.FromString(body))
                    answer = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _serve_grpc(self) -> None:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> ExportTraceServiceResponse:
                if receiver.delay:
                    time.sleep(receiver.delay)
                receiver._traces(request)
                return ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> ExportMetricsServiceResponse:
                if receiver.delay:
                    time.sleep(receiver.delay)
                receiver._metrics(request)
                return ExportMetricsServiceResponse()

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._grpc)
        port = self._grpc.add_insecure_port("127.0.0.1:0")
        # An http:// endpoint tells the gRPC exporter to connect without TLS.
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> OTLPReceiver:
        if self._grpc is not None:
            self._grpc.start()
        else:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            return
        self.server.shutdown()
        self.server.server_close()

    def _traces(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = attributes_of(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        Span(
                            name=span.name,
                            kind=KIND[span.kind],
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            start=span.start_time_unix_nano,
                            end=span.end_time_unix_nano,
                            attributes=attributes_of(span.attributes),
                            events=[
                                (e.name, e.time_unix_nano, attributes_of(e.attributes))
                                for e in span.events
                            ],
                            status=span.status.code,
                            resource=resource,
                            flags=span.flags,
                        )
                    )
        with self._lock:
            self.received.spans.extend(spans)
            self.received.exports += 1

    def _metrics(self, request: ExportMetricsServiceRequest) -> None:
        points = []
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.WhichOneof("data") != "histogram":
                        continue
                    for point in metric.histogram.data_points:
                        points.append(
                            Point(
                                metric=metric.name,
                                unit=metric.unit,
                                attributes=attributes_of(point.attributes),
                                count=point.count,
                                sum=point.sum,
                                bounds=list(point.explicit_bounds),
                                counts=list(point.bucket_counts),
                            )
                        )
        with self._lock:
            self.received.points.extend(points)
            self.received.exports += 1

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self.received.spans)

    def points(self) -> list[Point]:
        with self._lock:
            return list(self.received.points)

    def trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace received so far."""
        return [span for span in self.spans() if span.trace_id == trace_id]

    def wait_for(self, condition: Callable[[OTLPReceiver], Any], timeout: float = 10.0) -> Any:
        """Wait until ``condition(self)`` is truthy and return it, or fail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = condition(self)
            if found:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"not received within {timeout} s: {len(self.spans())} spans")
