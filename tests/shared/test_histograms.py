"""In-process histograms: OpenTelemetry's bucket rule, per-key series, cumulative and delta
collection; and their export through the SDK's OTLP exporter to a real receiver."""

from __future__ import annotations

import time

import pytest

from tests.otlp import OTLPReceiver
from tests.support import free_port
from zai_proxy.shared.histograms import BucketHistogram
from zai_proxy.shared.telemetry import telemetry_from_env

BOUNDS = (1, 4, 16)


def histogram() -> BucketHistogram:
    return BucketHistogram(
        "h", unit="s", description="d", bounds=BOUNDS, attributes=lambda key: {"key": key}
    )


@pytest.mark.parametrize(
    ("value", "bucket"),
    [(0, 0), (1, 0), (1.01, 1), (4, 1), (5, 2), (16, 2), (16.5, 3), (1e9, 3)],
)
def test_a_value_lands_in_the_bucket_whose_upper_bound_holds_it(value: float, bucket: int) -> None:
    h = histogram()
    h.record("a", value)
    (series,) = h.collect(reset=False)
    assert series.buckets == [int(i == bucket) for i in range(len(BOUNDS) + 1)]


def test_each_key_is_a_series_with_count_sum_and_extremes() -> None:
    h = histogram()
    for key, value in [("a", 2), ("b", 20), ("a", 8), ("a", 0.5)]:
        h.record(key, value)
    series = {s.attributes["key"]: s for s in h.collect(reset=False)}
    assert (series["a"].count, series["a"].sum, series["a"].min, series["a"].max) == (
        3,
        10.5,
        0.5,
        8,
    )
    assert series["a"].buckets == [1, 1, 1, 0]
    assert (series["b"].count, series["b"].buckets) == (1, [0, 0, 0, 1])


def test_cumulative_collection_keeps_counting_and_delta_starts_over() -> None:
    h = histogram()
    h.record("a", 2)
    first = h.collect(reset=False)
    h.record("a", 3)
    assert first[0].count == 1  # a copy: later measurements do not change it
    assert h.collect(reset=False)[0].count == 2
    (delta,) = h.collect(reset=True)
    assert delta.count == 2
    assert h.collect(reset=True) == []
    h.record("a", 5)
    (after,) = h.collect(reset=True)
    assert after.count == 1 and after.start >= delta.start


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        BucketHistogram("h", unit="s", description="d", bounds=(1, 1, 2), attributes=dict)


@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_the_series_reach_an_otlp_receiver_as_histogram_points(
    temporality: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OTLPReceiver() as otlp:
        # The SDK's exporters read os.environ themselves.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url)
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", temporality)
        telemetry = telemetry_from_env("histogram-test")
        assert telemetry is not None and telemetry.metrics is not None
        h = telemetry.metrics.histogram(
            "test.duration", unit="s", description="d", bounds=BOUNDS,
            attributes=lambda key: {"route": key},
        )  # fmt: skip
        for value in (0.5, 3, 3, 100):
            h.record("/v1/x", value)
        point = otlp.wait_for(lambda r: r.points())[0]
        assert (point.metric, point.unit, point.attributes) == (
            "test.duration",
            "s",
            {"route": "/v1/x"},
        )
        assert (point.count, point.sum, point.bounds, point.counts) == (
            4,
            106.5,
            [1, 4, 16],
            [1, 2, 0, 1],
        )
        h.record("/v1/x", 2)
        telemetry.shutdown()
        last = otlp.points()[-1]
        assert last.count == (5 if temporality == "cumulative" else 1)


def test_shutdown_with_the_endpoint_down_keeps_to_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")
    telemetry = telemetry_from_env("histogram-test")
    assert telemetry is not None and telemetry.metrics is not None
    h = telemetry.metrics.histogram(
        "test.duration", unit="s", description="d", bounds=BOUNDS, attributes=lambda key: {}
    )
    h.record("x", 1.0)
    started = time.monotonic()
    telemetry.metrics.shutdown(1.0)  # the last export retries against nothing until then
    assert time.monotonic() - started < 3.0
