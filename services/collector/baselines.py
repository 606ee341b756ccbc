"""A target's last-scrape baseline, as persisted with each written round (ADR 0014).

The merger turns counters into increases against each target's previous scrape. That
previous scrape is its *baseline*: the counter values and histogram buckets per series,
the target's ``process_start_time_seconds`` and the time of the scrape. The collector
writes the baselines of a round in the transaction that writes the round's snapshots
(``store.SnapshotStore.write``), with ``covered_until``, the end of the last interval
stored with them; a restarted collector loads them and its first round counts against
them (``merge.RoundMerger.restore``), so the traffic of the downtime is stored.

``series`` is the JSON text of the counters and histograms: read whole, never queried.
JSON text rather than a JSON column: non-finite values (``+Inf`` bounds) round-trip, and
``repr`` of every float is kept, so a baseline comes back exactly as it was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zai_proxy.collector.scrape_parse import Buckets, SeriesKey


@dataclass(frozen=True, slots=True)
class Baseline:
    """What the merger keeps of one target's last scrape, and how far rows are written."""

    target: str
    time: float  # epoch seconds of the scrape
    start_time: float | None  # the target's process_start_time_seconds, if it exports one
    covered_until: float  # end of the last round written with this baseline
    counters: Mapping[SeriesKey, float] = field(default_factory=dict)
    histograms: Mapping[SeriesKey, Buckets] = field(default_factory=dict)


def encode_series(baseline: Baseline) -> str:
    """The counters and histograms of a baseline as JSON text."""
    document = {
        "counters": [[name, labels, value] for (name, labels), value in baseline.counters.items()],
        "histograms": [
            [name, labels, list(buckets.items())]
            for (name, labels), buckets in baseline.histograms.items()
        ],
    }
    return json.dumps(document, separators=(",", ":"))


def decode_series(
    text: str,
) -> tuple[dict[SeriesKey, float], dict[SeriesKey, Buckets]]:
    """Counters and histograms from ``encode_series`` text; ValueError when it is not."""
    try:
        document: Any = json.loads(text)
        counters = {
            (str(name), _labels(labels)): float(value)
            for name, labels, value in document["counters"]
        }
        histograms = {
            (str(name), _labels(labels)): {float(b): float(c) for b, c in buckets}
            for name, labels, buckets in document["histograms"]
        }
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"not a stored baseline: {exc}") from exc
    return counters, histograms


def _labels(pairs: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(name), str(value)) for name, value in pairs)
