"""The collector's own Prometheus metrics (names defined here once).

No label names a target: with DNS discovery targets come and go, and a series per
address would grow without bound. ``kind`` is ``proxy`` or ``limiter``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SCRAPE_DURATION = "collector_scrape_duration_seconds"
SCRAPE_ERRORS = "collector_scrape_errors_total"
TARGETS = "collector_targets"
TARGETS_UP = "collector_targets_up"
ROUNDS = "collector_rounds_total"
ROUNDS_SKIPPED = "collector_rounds_skipped_total"
ROUND_DURATION = "collector_round_duration_seconds"
LAST_SUCCESS = "collector_last_success_timestamp_seconds"
SNAPSHOTS_WRITTEN = "collector_snapshots_written_total"
SNAPSHOTS_BUFFERED = "collector_snapshots_buffered"
SNAPSHOTS_DROPPED = "collector_snapshots_dropped_total"
LAST_WRITE = "collector_last_write_timestamp_seconds"
DATABASE_ERRORS = "collector_database_errors_total"
DATABASE_UP = "collector_database_up"

# Why a scrape failed: a small fixed set, so the label stays bounded.
SCRAPE_ERROR_REASONS = ("dns", "timeout", "connection", "status", "too_large", "parse")
DATABASE_OPERATIONS = ("write", "downsample", "expire", "restore")
DROP_REASONS = ("buffer_full", "rejected")
KINDS = ("proxy", "limiter")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class CollectorMetrics:
    """Scrape outcomes, round cadence, and what became of the snapshots."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.scrape_duration = Histogram(
            SCRAPE_DURATION, "Time to fetch and parse one target's exposition.", ["kind"],
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.scrape_errors = Counter(
            SCRAPE_ERRORS, "Failed scrapes (and DNS names that did not resolve), by reason.",
            ["kind", "reason"], registry=r,
        )  # fmt: skip
        self.targets = Gauge(TARGETS, "Targets of the last round.", ["kind"], registry=r)
        self.targets_up = Gauge(
            TARGETS_UP, "Targets that answered in the last round.", ["kind"], registry=r
        )
        self.rounds = Counter(ROUNDS, "Scrape rounds completed.", registry=r)
        self.rounds_skipped = Counter(
            ROUNDS_SKIPPED, "Rounds left out because the one before overran its slot.", registry=r
        )
        self.round_duration = Histogram(
            ROUND_DURATION, "Time from a round's start to its snapshots being queued.",
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.last_success = Gauge(
            LAST_SUCCESS, "End of the last round in which a proxy answered (epoch seconds).",
            registry=r,
        )  # fmt: skip
        self.snapshots_written = Counter(
            SNAPSHOTS_WRITTEN, "Snapshots written to the database.", registry=r
        )
        self.snapshots_buffered = Gauge(
            SNAPSHOTS_BUFFERED, "Snapshots in memory, waiting for the database.", registry=r
        )
        self.snapshots_dropped = Counter(
            SNAPSHOTS_DROPPED, "Snapshots given up: buffer full (oldest first) or rejected.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.last_write = Gauge(
            LAST_WRITE, "When snapshots were last written (epoch seconds).", registry=r
        )
        self.database_errors = Counter(
            DATABASE_ERRORS, "Failed database operations.", ["operation"], registry=r
        )
        self.database_up = Gauge(
            DATABASE_UP, "1 while the last database operation succeeded.", registry=r
        )
        # Every series exists from the start, so rate() and alerts see zeros, not gaps.
        for kind in KINDS:
            self.scrape_duration.labels(kind)
            self.targets.labels(kind)
            self.targets_up.labels(kind)
            for reason in SCRAPE_ERROR_REASONS:
                self.scrape_errors.labels(kind, reason)
        for reason in DROP_REASONS:
            self.snapshots_dropped.labels(reason)
        for operation in DATABASE_OPERATIONS:
            self.database_errors.labels(operation)
