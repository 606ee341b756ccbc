"""A Prometheus text exposition read into counters, gauges and histograms by series.

Parsing is prometheus_client's (``text_string_to_metric_families``); this module only
sorts its samples into three maps keyed by series (sample name, sorted label pairs):

- counters: the ``*_total`` samples of counter families (``_created`` is dropped);
- gauges: gauge families, and untyped ones;
- histograms: family name → cumulative buckets (``le`` as a float, +Inf included), keyed by
  the family name and the labels other than ``le``; ``_count`` and ``_sum`` are dropped
  (the +Inf bucket is the count).

Only families whose name starts with one of ``prefixes`` are kept, so a scrape holds what
the collector reads and nothing of the process or HTTP metrics beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs
SeriesKey = tuple[str, Labels]
Buckets = dict[float, float]

# The proxy's and the limiter's metrics, and the start time that reveals a restart.
DEFAULT_PREFIXES = ("proxy_", "limiter_", "process_start_time_seconds")
START_TIME = "process_start_time_seconds"


@dataclass(frozen=True, slots=True)
class Samples:
    """One exposition's samples by kind and series."""

    counters: Mapping[SeriesKey, float] = field(default_factory=dict)
    gauges: Mapping[SeriesKey, float] = field(default_factory=dict)
    histograms: Mapping[SeriesKey, Buckets] = field(default_factory=dict)

    @property
    def start_time(self) -> float | None:
        """The process start time, when the exposition has one."""
        return self.gauges.get((START_TIME, ()))


def labels_of(pairs: Mapping[str, str]) -> Labels:
    """A label mapping as a sorted tuple, usable as part of a key."""
    return tuple(sorted(pairs.items()))


def parse_exposition(text: str, prefixes: Iterable[str] = DEFAULT_PREFIXES) -> Samples:
    """Read a text exposition; raises ValueError when prometheus_client cannot parse it."""
    wanted = tuple(prefixes)
    counters: dict[SeriesKey, float] = {}
    gauges: dict[SeriesKey, float] = {}
    histograms: dict[SeriesKey, Buckets] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, IndexError, TypeError) as exc:
        raise ValueError(f"not a Prometheus text exposition: {exc}") from exc
    for family in families:
        if not family.name.startswith(wanted):
            continue
        if family.type == "counter":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counters[(sample.name, labels_of(sample.labels))] = sample.value
        elif family.type == "histogram":
            bucket_name = family.name + "_bucket"
            for sample in family.samples:
                if sample.name != bucket_name or "le" not in sample.labels:
                    continue
                rest = {k: v for k, v in sample.labels.items() if k != "le"}
                key = (family.name, labels_of(rest))
                histograms.setdefault(key, {})[float(sample.labels["le"])] = sample.value
        elif family.type in ("gauge", "unknown", "untyped"):
            for sample in family.samples:
                gauges[(sample.name, labels_of(sample.labels))] = sample.value
    return Samples(counters, gauges, histograms)
