"""Rollup maths: finer snapshots combined into a coarser one, field by field.

How each kind of field combines (see ``snapshot.py``):

- totals (``TOTALS``), per-model and per-client figures: summed (a client's wait buckets
  merged), then the clients folded to at most ``MAX_CLIENTS`` (``fold_clients``);
- rates and ratios: recomputed from the summed totals (``derive``), per second of the
  seconds the finer snapshots cover, so a bucket with missing 5 s points is not diluted;
- latency percentiles: re-derived from the summed bucket increments, a true p99 of the
  bucket within histogram resolution;
- gauges (``GAUGES``): averaged weighted by ``seconds``; the None-able ones
  (``OPTIONAL_GAUGES``) over the snapshots that have a value, None when none has;
- ``in_flight_max`` and ``replicas``: maximum;
- quota maps: the last value of each window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import fields

from zai_proxy.collector.percentiles import merge_buckets, quantile, thin_buckets
from zai_proxy.collector.snapshot import ClientFigures, ModelFigures, Snapshot

TOTALS = (
    "requests_total",
    "requests_2xx_total",
    "requests_4xx_total",
    "requests_429_total",
    "requests_5xx_total",
    "client_closed_total",
    "tokens_in_total",
    "tokens_out_total",
    "tokens_cache_read_total",
    "tokens_cache_write_total",
    "tokens_reasoning_total",
    "tokens_estimated_total",
    "cost_usd",
    "upstream_errors_total",
    "upstream_429_frequency_total",
    "upstream_429_concurrency_total",
    "upstream_429_quota_total",
    "upstream_429_congestion_total",
    "retries_total",
    "proxy_rate_limited_total",
    "refusals_total",
    "limiter_increases_total",
    "limiter_decreases_total",
    "limiter_probes_total",
)
DERIVED = (
    "requests_per_s",
    "error_ratio",
    "tokens_in_per_s",
    "tokens_out_per_s",
    "upstream_429_ratio",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "ttfb_p50",
    "ttfb_p95",
    "ttfb_p99",
    "refusal_wait_p50",
    "refusal_wait_p95",
    "refusal_wait_p99",
)
GAUGES = ("in_flight", "queued", "workers", "worker_utilization", "degraded_replicas")
OPTIONAL_GAUGES = ("limiter_rate", "limiter_ceiling", "limiter_hold", "limiter_concurrency")
MAXIMA = ("replicas", "in_flight_max")
# Each percentile family and the buckets it is read from.
HISTOGRAMS = {
    "latency": "latency_buckets",
    "ttfb": "ttfb_buckets",
    "refusal_wait": "refusal_wait_buckets",
}
BUCKETS = tuple(HISTOGRAMS.values())
LAST = ("quota_used", "quota_reset_at")
KEYS = ("ts", "seconds", "variant")

PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
_MODEL_FIELDS = tuple(f.name for f in fields(ModelFigures))
# A client's totals and its maps of counts (summed key by key).
CLIENT_TOTALS = ("requests", "requests_2xx", "admitted", "refused", "tokens_in", "tokens_out")
CLIENT_COUNTS = ("refused_by", "admitted_by_class")
# Client aliases a snapshot keeps, ``OTHER_CLIENT`` included: client keys are configured,
# so a fleet has few, but rows of several proxies' configurations, or of a renamed key
# each day, must not grow without bound. The least busy (fewest answers) are folded.
MAX_CLIENTS = 32
OTHER_CLIENT = "other"


def bucket_start(ts: float, seconds: float) -> float:
    """The start of the ``seconds``-long bucket holding ``ts`` (buckets align to the epoch)."""
    return math.floor(ts / seconds) * seconds


def upstream_attempts(snapshot: Snapshot) -> float:
    """Upstream attempts: requests that went upstream (all but the proxy's own 429s) + retries."""
    return snapshot.requests_total - snapshot.proxy_rate_limited_total + snapshot.retries_total


def upstream_429s(snapshot: Snapshot) -> float:
    """Upstream 429 answers of every class."""
    return (
        snapshot.upstream_429_frequency_total
        + snapshot.upstream_429_concurrency_total
        + snapshot.upstream_429_quota_total
        + snapshot.upstream_429_congestion_total
    )


def derive(snapshot: Snapshot, covered: float | None = None) -> Snapshot:
    """Set the rates, ratios and percentiles from the totals and buckets; returns it.

    ``covered`` is the seconds the totals were counted over (default: ``seconds``).
    """
    s = snapshot
    per = covered if covered is not None else s.seconds
    s.requests_per_s = s.requests_total / per if per > 0 else 0.0
    s.tokens_in_per_s = s.tokens_in_total / per if per > 0 else 0.0
    s.tokens_out_per_s = s.tokens_out_total / per if per > 0 else 0.0
    s.error_ratio = s.requests_5xx_total / s.requests_total if s.requests_total > 0 else 0.0
    attempts = upstream_attempts(s)
    # Requests still in flight when a round ends can put a 429 in one round and its request
    # in the next, so a short interval may count more 429s than finished attempts.
    s.upstream_429_ratio = min(1.0, upstream_429s(s) / attempts) if attempts > 0 else 0.0
    for family, buckets in HISTOGRAMS.items():
        for suffix, q in PERCENTILES:
            setattr(s, f"{family}_{suffix}", quantile(getattr(s, buckets), q))
    for figures in s.clients.values():
        derive_client(figures, per)
    return s


def derive_client(figures: ClientFigures, seconds: float) -> ClientFigures:
    """Set a client's rate (over ``seconds``) and wait percentiles; returns it."""
    figures.admitted_per_s = figures.admitted / seconds if seconds > 0 else 0.0
    for suffix, q in PERCENTILES:
        setattr(figures, f"wait_{suffix}", quantile(figures.wait_buckets, q))
    return figures


def downsample(snapshots: Sequence[Snapshot], ts: float, seconds: float) -> Snapshot:
    """One snapshot of ``[ts, ts + seconds)`` from the finer snapshots of one variant in it."""
    if not snapshots:
        raise ValueError("nothing to downsample")
    variants = {s.variant for s in snapshots}
    if len(variants) > 1:
        raise ValueError(f"snapshots of several variants: {sorted(variants)}")
    ordered = sorted(snapshots, key=lambda s: s.ts)
    out = Snapshot(ts=ts, seconds=seconds, variant=ordered[0].variant)
    covered = sum(s.seconds for s in ordered)

    for name in TOTALS:
        setattr(out, name, sum(getattr(s, name) for s in ordered))
    for name in MAXIMA:
        setattr(out, name, max(getattr(s, name) for s in ordered))
    for name in GAUGES:
        setattr(out, name, _weighted((getattr(s, name), s.seconds) for s in ordered))
    for name in OPTIONAL_GAUGES:
        present = [(getattr(s, name), s.seconds) for s in ordered if getattr(s, name) is not None]
        setattr(out, name, _weighted(present) if present else None)
    for name in BUCKETS:
        setattr(out, name, merge_buckets(*(getattr(s, name) for s in ordered)))
    for name in LAST:
        last: dict[str, float] = {}
        for s in ordered:
            last.update(getattr(s, name))
        setattr(out, name, last)
    out.models = merge_models(s.models for s in ordered)
    out.clients = fold_clients(merge_clients(s.clients for s in ordered))
    return derive(out, covered)


def merge_models(maps: Iterable[dict[str, ModelFigures]]) -> dict[str, ModelFigures]:
    """Per-model figures summed model by model."""
    merged: dict[str, ModelFigures] = {}
    for models in maps:
        for model, figures in models.items():
            total = merged.setdefault(model, ModelFigures())
            for name in _MODEL_FIELDS:
                setattr(total, name, getattr(total, name) + getattr(figures, name))
    return merged


def merge_clients(maps: Iterable[dict[str, ClientFigures]]) -> dict[str, ClientFigures]:
    """Per-client totals summed client by client, their wait buckets merged (not derived)."""
    merged: dict[str, ClientFigures] = {}
    for clients in maps:
        for client, figures in clients.items():
            merged[client] = _plus(merged.get(client), figures)
    return merged


def fold_clients(
    clients: dict[str, ClientFigures], limit: int = MAX_CLIENTS
) -> dict[str, ClientFigures]:
    """At most ``limit`` clients by alias: past that, the least busy folded into ``other``."""
    if len(clients) <= limit:
        return dict(sorted(clients.items()))
    busiest = sorted(clients, key=lambda c: (-clients[c].requests, c))
    kept = [c for c in busiest if c != OTHER_CLIENT][: limit - 1]
    folded = merge_clients({OTHER_CLIENT: clients[c]} for c in clients if c not in kept)
    out = {c: clients[c] for c in kept} | folded
    return dict(sorted(out.items()))


def _plus(total: ClientFigures | None, figures: ClientFigures) -> ClientFigures:
    # A new ClientFigures: the stored ones are never changed in place.
    out = ClientFigures()
    for part in (total, figures):
        if part is None:
            continue
        for name in CLIENT_TOTALS:
            setattr(out, name, getattr(out, name) + getattr(part, name))
        for name in CLIENT_COUNTS:
            counts = getattr(out, name)
            for key, count in getattr(part, name).items():
                counts[key] = counts.get(key, 0.0) + count
    parts = [p.wait_buckets for p in (total, figures) if p is not None]
    out.wait_buckets = thin_buckets(merge_buckets(*parts))
    return out


def _weighted(pairs: Iterable[tuple[float, float]]) -> float:
    total = weight = 0.0
    for value, seconds in pairs:
        total += value * seconds
        weight += seconds
    return total / weight if weight > 0 else 0.0
