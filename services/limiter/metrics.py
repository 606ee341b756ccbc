"""The limiter service's Prometheus metrics (names defined here once).

Every limiter replica exports the pools' current state (read from the store), so the
gauges agree across replicas: aggregate them with max, not sum. Decisions are counted
only by the leader that made them, so their sum across replicas is the true count.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge

from zai_proxy.limiter.control import StepResult
from zai_proxy.limiter.controller import RateLimitParams
from zai_proxy.limiter.outcomes import Outcome
from zai_proxy.shared.limiter_metrics import (
    CEILING,
    CONCURRENCY,
    DECISIONS,
    HOLD,
    LEADER,
    QUOTA_AGE,
    QUOTA_CAP,
    QUOTA_REMAINING,
    QUOTA_RESET,
    QUOTA_USED,
    RATE,
    REPLICAS,
    STORE_UP,
    WINDOW_429_RATIO,
    WINDOW_REQUESTS,
)

_RATIO_CLASSES = ("rate_frequency", "rate_concurrency", "rate_quota", "rate_congestion")


class LimiterMetrics:
    """Gauges of every pool's limit, decision counters, leadership and quota."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.rate = Gauge(RATE, "Requests/s the pool admits now.", ["pool"], registry=r)
        self.ceiling = Gauge(
            CEILING, "Learned ceiling of the pool (requests/s); absent until learned.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.hold = Gauge(HOLD, "The hold line: ceiling x (1 - hold margin).", ["pool"], registry=r)
        self.concurrency = Gauge(
            CONCURRENCY, "Cluster-wide cap on concurrent upstream requests.", ["pool"],
            registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            DECISIONS, "Controller steps by what they did (increase, decrease, probe, hold).",
            ["pool", "direction"], registry=r,
        )  # fmt: skip
        self.window_requests = Gauge(
            WINDOW_REQUESTS, "Counts of the last stepped window, by outcome (and demand).",
            ["pool", "outcome"], registry=r,
        )  # fmt: skip
        self.window_429_ratio = Gauge(
            WINDOW_429_RATIO, "Share of the last stepped window's attempts answered 429.",
            ["pool", "class"], registry=r,
        )  # fmt: skip
        self.quota_cap = Gauge(
            QUOTA_CAP, "Rate cap from quota pacing (requests/s); absent when none.", ["pool"],
            registry=r,
        )  # fmt: skip
        self.leader = Gauge(LEADER, "1 while this replica holds the leader lease.", registry=r)
        self.store_up = Gauge(STORE_UP, "1 while the limiter store answers.", registry=r)
        self.replicas = Gauge(
            REPLICAS, "Proxy replicas alive in the pool (by heartbeat).", ["pool"], registry=r
        )
        self.quota_used = Gauge(QUOTA_USED, "Share of a quota window used.", ["window"], registry=r)
        self.quota_remaining = Gauge(
            QUOTA_REMAINING, "Share of a quota window left.", ["window"], registry=r
        )
        self.quota_reset = Gauge(
            QUOTA_RESET, "When a quota window resets (epoch seconds).", ["window"], registry=r
        )
        self.quota_age = Gauge(QUOTA_AGE, "Seconds since the last good quota sample.", registry=r)

    def stepped(self, result: StepResult) -> None:
        """Count a step made by this replica."""
        self.decisions.labels(result.pool, result.decision.value).inc()
        counts = result.counts
        # Every class is set, absent ones to 0, so no stale count outlives its window.
        for outcome in (*(o.value for o in Outcome), "demand"):
            self.window_requests.labels(result.pool, outcome).set(counts.get(outcome, 0))
        attempts = sum(v for k, v in counts.items() if k not in ("demand", "peak_concurrency"))
        for name in _RATIO_CLASSES:
            ratio = counts.get(name, 0) / attempts if attempts else 0.0
            self.window_429_ratio.labels(result.pool, name).set(ratio)
        if result.quota_cap is None:
            with contextlib.suppress(KeyError):
                self.quota_cap.remove(result.pool)
        else:
            self.quota_cap.labels(result.pool).set(result.quota_cap)

    def pool_state(
        self, pool: str, saved: dict[str, str], params: RateLimitParams, replicas: int
    ) -> None:
        """Show a pool's saved state."""
        self.rate.labels(pool).set(float(saved.get("rate", params.initial_rate)))
        self.concurrency.labels(pool).set(float(saved.get("concurrency", params.max_concurrency)))
        self.replicas.labels(pool).set(replicas)
        ceiling = saved.get("ceiling", "")
        if ceiling:
            self.ceiling.labels(pool).set(float(ceiling))
            self.hold.labels(pool).set(float(ceiling) * (1 - params.hold_margin))
