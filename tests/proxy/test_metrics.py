"""Metric label values stay bounded whatever names clients invent."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from zai_proxy.proxy.metrics import OTHER, UNKNOWN, ModelLabels, ProxyMetrics
from zai_proxy.proxy.usage import Usage


def test_model_names_are_normalised() -> None:
    labels = ModelLabels(10)
    assert labels("GLM-4.6") == "glm-4.6"
    assert labels(" glm-4.6 ") == "glm-4.6"
    assert labels('glm"}\n4') == "glm4"
    assert labels(None) == UNKNOWN
    assert labels("") == UNKNOWN
    assert labels("x" * 500) == "x" * 64


@given(st.lists(st.text(max_size=80), max_size=300))
def test_no_more_than_the_limit_of_distinct_labels(names: list[str]) -> None:
    labels = ModelLabels(5)
    seen = {labels(name) for name in names}
    assert len(seen - {OTHER, UNKNOWN}) <= 5
    assert len(labels._seen) <= 20


def test_known_models_keep_their_label_after_the_cap() -> None:
    labels = ModelLabels(2)
    assert labels("a") == "a"
    assert labels("b") == "b"
    assert labels("c") == OTHER
    assert labels("a") == "a"
    assert labels("A") == "a"


def test_tokens_are_counted_by_kind_and_source() -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics("canary", 10, registry)
    metrics.observe_tokens("glm-4.6", "team-a", Usage(10, 5, 3, 2, 1), "usage")
    labels = {"model": "glm-4.6", "key": "team-a", "variant": "canary", "source": "usage"}
    for name, value in [
        ("proxy_token_input_total", 10),
        ("proxy_token_output_total", 5),
        ("proxy_token_cache_read_total", 3),
        ("proxy_token_cache_write_total", 2),
        ("proxy_token_reasoning_total", 1),
    ]:
        assert registry.get_sample_value(name, labels) == value
