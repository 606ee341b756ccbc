"""OpenTelemetry for every service, configured by the standard OTEL_* variables alone.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is
set: then ``telemetry_from_env`` returns None without importing anything of the SDK, and
the services do no tracing work at all (their hooks are behind a None check). Set, it
builds a tracer provider (and the metric export) from the rest of the standard variables,
read by the SDK itself: ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the default,
or ``grpc``), ``OTEL_TRACES_SAMPLER``/``_ARG`` (default ``parentbased_always_on``),
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_EXPORTER`` or
``OTEL_METRICS_EXPORTER`` ``none`` to turn one signal off, ``OTEL_BSP_*`` (the batch span
processor: its queue, 2,048 spans by default, bounds the memory an endpoint that is down
or slow can cost; spans beyond it are dropped), ``OTEL_METRIC_EXPORT_INTERVAL``, headers,
timeouts and certificates.

Spans are exported from the batch processor's own thread: a request only appends its
finished span to the queue, and never waits for the exporter. The SDK logs a warning for
every span it drops from a full queue: under load against an endpoint that is down, a
line per request, which would cost the proxy more than the tracing itself; they are
thinned to one line per QUEUE_FULL_LOG_SECONDS, with the count of those left out.

The providers are private to the service that asked (no global provider is set): in
``zai-proxy up`` each service reports under its own ``service.name``.

A service with a span per request (the proxy) asks for ``export="process"``: its spans
are exported by a child process (shared/span_export.py) running the same SDK processor
and exporter, so that their protobuf encoding never holds the GIL beside its event loop.
It is then given the SDK's sampler and id generator (``Telemetry.sampler``,
``.id_generator``) and the child's handle (``Telemetry.spans``) to record finished spans
as plain tuples; spans started through ``Telemetry.tracer`` go the same way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from zai_proxy import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import IdGenerator, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Tracer

    from zai_proxy.shared.metric_export import MetricExport
    from zai_proxy.shared.span_export import SpanExportProcess

SpanExport = Literal["thread", "process"]

log = logging.getLogger("zai_proxy.telemetry")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
PROTOCOLS = ("http/protobuf", "grpc")
# Seconds a service's shutdown waits for the last spans to go out (an endpoint that is
# down must not hold a drain for the exporter's whole retry schedule).
SHUTDOWN_SECONDS = 5.0


QUEUE_FULL_LOG_SECONDS = 60.0


class QueueFullFilter(logging.Filter):
    """Lets one "Queue full" warning of the SDK through per interval, counting the rest."""

    def __init__(self, interval: float = QUEUE_FULL_LOG_SECONDS) -> None:
        super().__init__()
        self.interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Queue full"):
            return True
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._dropped += 1
                return False
            self._next = now + self.interval
            dropped, self._dropped = self._dropped, 0
        record.msg = "span queue full (OTEL_BSP_MAX_QUEUE_SIZE): dropping spans"
        if dropped:
            record.msg += f"; {dropped} more dropped since the last warning"
        record.args = ()
        return True


_QUEUE_FULL = QueueFullFilter()


def quiet_queue_full() -> None:
    """Thin the SDK's "Queue full" warnings (QueueFullFilter) in this process."""
    queue_log = logging.getLogger("opentelemetry.sdk._shared_internal")
    if _QUEUE_FULL not in queue_log.filters:
        queue_log.addFilter(_QUEUE_FULL)


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether an OTLP endpoint is configured."""
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


@dataclass(slots=True)
class Telemetry:
    """A service's tracer, its span export process (``export="process"`` only) and its
    metrics' export (None when OTEL_METRICS_EXPORTER is none): histograms counted
    in-process (shared/histograms.py), as the SDK's ``Histogram.record`` costs too much
    per request."""

    tracer: Tracer
    tracer_provider: TracerProvider
    metrics: MetricExport | None
    spans: SpanExportProcess | None = None

    @property
    def sampler(self) -> Sampler:
        """The sampler of OTEL_TRACES_SAMPLER, as the SDK built it."""
        return self.tracer_provider.sampler

    @property
    def id_generator(self) -> IdGenerator:
        """The SDK's trace and span id generator."""
        return self.tracer_provider.id_generator

    @property
    def resource(self) -> Resource:
        """The service's resource (service.name, OTEL_RESOURCE_ATTRIBUTES, ...)."""
        return self.tracer_provider.resource

    def shutdown(self) -> None:
        """Export what is queued (within SHUTDOWN_SECONDS) and stop the exporters."""
        millis = int(SHUTDOWN_SECONDS * 1000)
        self.tracer_provider.force_flush(millis)
        self.tracer_provider.shutdown()
        if self.spans is not None:
            self.spans.shutdown(SHUTDOWN_SECONDS)
        if self.metrics is not None:
            self.metrics.shutdown(SHUTDOWN_SECONDS)


def _protocol(environ: Mapping[str, str], signal: str) -> str:
    protocol = (
        environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or grpc, got {protocol!r}"
        )
    return protocol


def _off(environ: Mapping[str, str], variable: str) -> bool:
    return environ.get(variable, "otlp").strip().lower() == "none"


def telemetry_from_env(
    service_name: str,
    environ: Mapping[str, str] = os.environ,
    *,
    export: SpanExport = "thread",
) -> Telemetry | None:
    """The service's telemetry as the OTEL_* variables configure it; None when no endpoint
    is set (nothing imported), or the otel extra is not installed (said once, in the log).

    ``service_name`` is the default ``service.name``; OTEL_SERVICE_NAME (or a service.name
    in OTEL_RESOURCE_ATTRIBUTES) wins over it. ``export``: spans exported by the SDK's
    batch processor on a thread of this process, or by a child process."""
    if not enabled(environ) or _off(environ, "OTEL_TRACES_EXPORTER"):
        return None
    _protocol(environ, "TRACES")
    metrics_protocol = _protocol(environ, "METRICS")
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
            "(pip install 'zai-proxy[otel]'): no traces are exported"
        )
        return None

    quiet_queue_full()
    resource = resource_of(service_name)
    tracer_provider = TracerProvider(resource=resource)
    scope = InstrumentationScope(f"zai_proxy.{service_name}", __version__)
    spans = None
    if export == "process":
        from zai_proxy.shared.span_export import SpanExportProcess, SpanForwarder

        spans = SpanExportProcess(service_name, (scope.name, scope.version or ""), environ)
        tracer_provider.add_span_processor(SpanForwarder(spans))
    else:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter(environ)))
    metrics = None
    metrics_endpoint = (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip()
    )
    if metrics_endpoint and not _off(environ, "OTEL_METRICS_EXPORTER"):
        from zai_proxy.shared.metric_export import MetricExport

        metrics = MetricExport(_metric_exporter(metrics_protocol), resource, scope, environ)
    return Telemetry(
        tracer=tracer_provider.get_tracer(scope.name, scope.version),
        tracer_provider=tracer_provider,
        metrics=metrics,
        spans=spans,
    )


def resource_of(service_name: str) -> Resource:
    """The resource of OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, with
    ``service_name`` as service.name when neither names it, and our version."""
    from opentelemetry.sdk.resources import (
        SERVICE_NAME,
        SERVICE_VERSION,
        OTELResourceDetector,
        Resource,
    )

    named = SERVICE_NAME in OTELResourceDetector().detect().attributes
    defaults = {SERVICE_VERSION: __version__, **({} if named else {SERVICE_NAME: service_name})}
    return Resource.create(defaults)


def span_exporter(environ: Mapping[str, str] = os.environ) -> SpanExporter:
    """The OTLP span exporter of OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL; it reads its
    endpoint, headers, timeout and certificates from the OTEL_* variables itself."""
    if _protocol(environ, "TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )

    return HTTPSpanExporter()


def _metric_exporter(protocol: str) -> MetricExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HTTPMetricExporter,
    )

    return HTTPMetricExporter()
