"""The limiter service's Prometheus metrics (names defined here once).

Every limiter replica exports the pools' current state (read from the store), so the
gauges agree across replicas: aggregate them with max, not sum. Decisions and the window
gauges (the last second of ticks the leader stepped) come only from the leader that made
them, so their sum across replicas is the true count. A rate or cap that is not limited
(no evidence yet) is exported as +Inf.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from zai_proxy.limiter.control import StepResult
from zai_proxy.limiter.controller import Params
from zai_proxy.limiter.store import Parking
from zai_proxy.shared.limiter_metrics import (
    CEILING,
    CONCURRENCY,
    DECISIONS,
    HOLD,
    KEY_PARKED,
    KEY_PARKED_UNTIL,
    KEY_QUOTA_RESET,
    KEY_QUOTA_USED,
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
from zai_proxy.shared.outcomes import Outcome

_RATIO_CLASSES = ("rate_frequency", "rate_concurrency", "rate_quota", "rate_congestion")


class LimiterMetrics:
    """Gauges of every pool's limit, decision counters, leadership and quota."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.rate = Gauge(
            RATE, "Requests/s the pool admits now (+Inf: no limit).", ["pool"], registry=r
        )
        self.ceiling = Gauge(
            CEILING, "Learned limit of the pool (requests/s); absent until a 429 taught one.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.hold = Gauge(HOLD, "The hold line: limit x (1 - hold margin).", ["pool"], registry=r)
        self.concurrency = Gauge(
            CONCURRENCY, "Cluster-wide cap on concurrent upstream requests (+Inf: none).", ["pool"],
            registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            DECISIONS, "Controller steps by what they did (increase, decrease, probe, hold).",
            ["pool", "direction"], registry=r,
        )  # fmt: skip
        self.window_requests = Gauge(
            WINDOW_REQUESTS, "Counts of the last second of stepped ticks, by outcome (and "
            "sent, throttled, capped).", ["pool", "outcome"], registry=r,
        )  # fmt: skip
        self.window_429_ratio = Gauge(
            WINDOW_429_RATIO, "Share of the last second's attempts answered 429, by class.",
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
        self.key_quota_used = Gauge(
            KEY_QUOTA_USED, "Share of an upstream key's quota window used (key: its alias).",
            ["pool", "key", "window"], registry=r,
        )  # fmt: skip
        self.key_quota_reset = Gauge(
            KEY_QUOTA_RESET, "When an upstream key's quota window resets (epoch seconds).",
            ["pool", "key", "window"], registry=r,
        )  # fmt: skip
        self.key_parked = Gauge(
            KEY_PARKED, "1 while the upstream key's pool is parked (key: its alias).",
            ["pool", "key"], registry=r,
        )  # fmt: skip
        self.key_parked_until = Gauge(
            KEY_PARKED_UNTIL, "When the key's parking ends (epoch seconds; +Inf: until lifted; "
            "0: not parked).", ["pool", "key"], registry=r,
        )  # fmt: skip
        self._windows: dict[str, deque[Mapping[str, float]]] = {}

    def stepped(self, result: StepResult) -> None:
        """Count a step made by this replica."""
        self.decisions.labels(result.pool, result.decision.value).inc()
        window = self._windows.setdefault(result.pool, deque(maxlen=_WINDOW_STEPS))
        window.append(result.counts)
        counts: dict[str, float] = {}
        for step_counts in window:
            for name, value in step_counts.items():
                counts[name] = counts.get(name, 0) + value
        # Every class is set, absent ones to 0, so no stale count outlives its window.
        for outcome in (*(o.value for o in Outcome), "sent", "throttled", "capped"):
            self.window_requests.labels(result.pool, outcome).set(counts.get(outcome, 0))
        attempts = sum(counts.get(o.value, 0) for o in Outcome)
        for name in _RATIO_CLASSES:
            ratio = counts.get(name, 0) / attempts if attempts else 0.0
            self.window_429_ratio.labels(result.pool, name).set(ratio)
        if result.quota_cap is None:
            with contextlib.suppress(KeyError):
                self.quota_cap.remove(result.pool)
        else:
            self.quota_cap.labels(result.pool).set(result.quota_cap)

    def key_parking(self, pool: str, alias: str, parking: Parking | None) -> None:
        """Show whether an upstream key's pool is parked, and until when."""
        self.key_parked.labels(pool, alias).set(0 if parking is None else 1)
        self.key_parked_until.labels(pool, alias).set(0 if parking is None else parking.until)

    def pool_state(self, pool: str, saved: dict[str, str], params: Params, replicas: int) -> None:
        """Show a pool's saved state."""
        rate = saved.get("rate", "")
        self.rate.labels(pool).set(float(rate) if rate else params.initial_rate)
        cap = saved.get("concurrency", "")
        self.concurrency.labels(pool).set(float(cap) if cap else float("inf"))
        self.replicas.labels(pool).set(replicas)
        limit = saved.get("limit", "")
        if limit:
            self.ceiling.labels(pool).set(float(limit))
            self.hold.labels(pool).set(float(limit) * (1 - params.margin))
        else:
            for gauge in (self.ceiling, self.hold):
                with contextlib.suppress(KeyError):
                    gauge.remove(pool)


# The window gauges cover this many steps (a second at the default tick).
_WINDOW_STEPS = 4
