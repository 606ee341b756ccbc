"""The in-process histograms (shared/histograms.py) exported over OTLP, on a thread.

Every ``OTEL_METRIC_EXPORT_INTERVAL`` ms (60,000 by default) the series are turned into
the SDK's own data points (``opentelemetry.sdk.metrics.export``) and handed to the SDK's
OTLP metric exporter, which encodes and sends them: nothing here speaks the protocol.
Temporality follows ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` as the SDK's
reader would for a histogram: cumulative by default, delta for ``delta`` and
``lowmemory``. The SDK's own reader is not used: it exports only what the SDK's
instruments collected, and its ``collect`` is final.

Imported only when metrics are on (it imports the SDK).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from zai_proxy.shared.histograms import BucketHistogram

log = logging.getLogger("zai_proxy.telemetry")

DEFAULT_INTERVAL_MS = 60_000.0
DEFAULT_TIMEOUT_MS = 30_000.0


def _millis(environ: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(environ.get(name, default))
    except ValueError as exc:
        raise ValueError(f"{name} must be a number of milliseconds") from exc
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value:g}")
    return value


class MetricExport:
    """A service's histograms and the thread that exports them."""

    def __init__(
        self,
        exporter: MetricExporter,
        resource: Resource,
        scope: InstrumentationScope,
        environ: Mapping[str, str],
    ) -> None:
        self.histograms: list[BucketHistogram] = []
        self._exporter = exporter
        self._resource = resource
        self._scope = scope
        self._interval = _millis(environ, "OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_INTERVAL_MS)
        self._timeout = _millis(environ, "OTEL_METRIC_EXPORT_TIMEOUT", DEFAULT_TIMEOUT_MS)
        preference = environ.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "")
        self._delta = preference.strip().lower() in ("delta", "lowmemory")
        self._lock = threading.Lock()  # one export at a time (the last one at shutdown)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zai-metric-export", daemon=True)
        self._thread.start()

    def histogram(
        self,
        name: str,
        *,
        unit: str,
        description: str,
        bounds: Sequence[float],
        attributes: Callable[[Any], dict[str, Any]],
    ) -> BucketHistogram:
        """A new histogram, exported from the next round on."""
        histogram = BucketHistogram(
            name, unit=unit, description=description, bounds=bounds, attributes=attributes
        )
        self.histograms.append(histogram)
        return histogram

    def _run(self) -> None:
        while not self._stop.wait(self._interval / 1000):
            self.export()

    def export(self) -> None:
        """Send what the histograms hold now (nothing when they hold nothing)."""
        with self._lock:
            data = self.collect()
            if data is None:
                return
            try:
                self._exporter.export(data, timeout_millis=self._timeout)
            except Exception:  # the exporter logs its own failures; this is the rest
                log.exception("exporting metrics failed")

    def collect(self) -> MetricsData | None:
        """The histograms' series as the SDK's metrics data."""
        now = time.time_ns()
        temporality = (
            AggregationTemporality.DELTA if self._delta else AggregationTemporality.CUMULATIVE
        )
        metrics = []
        for histogram in self.histograms:
            points = [
                HistogramDataPoint(
                    attributes=series.attributes,
                    start_time_unix_nano=series.start,
                    time_unix_nano=now,
                    count=series.count,
                    sum=series.sum,
                    bucket_counts=series.buckets,
                    explicit_bounds=histogram.bounds,
                    min=series.min,
                    max=series.max,
                )
                for series in histogram.collect(reset=self._delta)
            ]
            if points:
                data = Histogram(data_points=points, aggregation_temporality=temporality)
                metrics.append(Metric(histogram.name, histogram.description, histogram.unit, data))
        if not metrics:
            return None
        scope_metrics = ScopeMetrics(self._scope, metrics, self._scope.schema_url or "")
        return MetricsData(
            [ResourceMetrics(self._resource, [scope_metrics], self._resource.schema_url)]
        )

    def shutdown(self, timeout: float) -> None:
        """Stop the thread, export the last figures, and close the exporter (``timeout``
        seconds for all of it)."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(timeout)
        remaining = deadline - time.monotonic()
        if not self._thread.is_alive() and remaining > 0:
            # The HTTP exporter retries on its own schedule (up to OTEL_EXPORTER_OTLP_TIMEOUT,
            # 10 s) whatever timeout it is given: the last export gets what is left, on a
            # daemon thread, and is abandoned after.
            last = threading.Thread(target=self.export, name="zai-metric-export-last", daemon=True)
            last.start()
            last.join(remaining)
        self._exporter.shutdown(timeout_millis=max(deadline - time.monotonic(), 0.0) * 1000)
