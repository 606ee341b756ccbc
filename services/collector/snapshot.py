"""One variant's figures for one interval: what the collector computes and stores.

A snapshot covers ``[ts, ts + seconds)``. Three kinds of field, and how each kind
downsamples into a coarser resolution (5 s → 1 min → 1 h):

- totals (``*_total`` counts within the interval, and ``cost_usd``): summed;
- rates (per second) and ratios: recomputed from the summed totals where a total exists,
  else averaged weighted by ``seconds``;
- gauges (in-flight, limiter rate, ceiling, ...): averaged weighted by ``seconds``, except
  the ``*_max`` ones (maximum) and ``replicas`` (maximum);
- latency percentiles: re-derived from the merged histogram buckets (``latency_buckets``,
  ``ttfb_buckets`` and ``refusal_wait_buckets`` hold the interval's bucket increments,
  cumulative per upper bound), so a 1 h p99 is a true p99 of the hour, within histogram
  resolution (ADR 0017).

Per client key (``clients``, by alias: ``anonymous`` without PROXY_API_KEYS): its totals
(answered, 2xx, admitted by the limiter, refused by the proxy and why, tokens in and out)
and its limiter wait's buckets, summed like the variant's; at most ``rollup.MAX_CLIENTS``
aliases, the least busy folded into ``other`` (``rollup.fold_clients``).

Three latency populations, never mixed: ``latency_*`` is the whole duration of requests
the upstream answered (``origin="upstream"``: its answer was passed on, errors included);
``ttfb_*`` is the time to the first body byte of those same answers; ``refusal_wait_*``
is how long the requests the proxy answered itself (``origin="proxy"``, counted in
``refusals_total``) waited for that answer. Rows written before ADR 0017 hold every
request in ``latency_buckets`` and no refusal figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Upper bound (seconds, "+Inf" as math.inf) → cumulative count in the interval.
Buckets = dict[float, float]


@dataclass(slots=True)
class ModelFigures:
    """One model's share of an interval (totals)."""

    requests: float = 0.0
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    tokens_cache_read: float = 0.0
    tokens_cache_write: float = 0.0
    tokens_reasoning: float = 0.0
    cost_usd: float = 0.0


@dataclass(slots=True)
class ClientFigures:
    """One client key's share of an interval: totals, its limiter wait, and what derives.

    ``admitted`` counts the requests whose first upstream attempt the limiter admitted
    (each observed once in ``wait_buckets``, its waits' cumulative buckets);
    ``admitted_by_class`` splits them by priority class (``interactive``, ``batch``: a
    request may lower its class); ``refused`` counts the requests the proxy answered
    itself, ``refused_by`` splits them by reason (the X-Proxy-Error code, or
    ``client_budget_<rpm|concurrent|tokens_per_day>``). ``requests`` (every answer, the
    refused included) and ``requests_2xx`` are the proxy's answers to the client.
    """

    requests: float = 0.0
    requests_2xx: float = 0.0
    admitted: float = 0.0
    refused: float = 0.0
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    refused_by: dict[str, float] = field(default_factory=dict)
    admitted_by_class: dict[str, float] = field(default_factory=dict)
    wait_buckets: Buckets = field(default_factory=dict)
    # derived (``rollup.derive``): per second of the interval, and from ``wait_buckets``
    admitted_per_s: float = 0.0
    wait_p50: float | None = None
    wait_p95: float | None = None
    wait_p99: float | None = None


@dataclass(slots=True)
class Snapshot:
    """One variant's figures for one interval (see the module docstring for each kind)."""

    ts: float  # interval start, epoch seconds, aligned to the resolution
    seconds: float  # interval length: 5, 60 or 3600
    variant: str
    replicas: int = 0  # proxy replicas seen (gauge, max)

    # totals within the interval
    requests_total: float = 0.0
    requests_2xx_total: float = 0.0
    requests_4xx_total: float = 0.0
    requests_429_total: float = 0.0  # answered 429 to the client (upstream's or the proxy's)
    requests_5xx_total: float = 0.0
    client_closed_total: float = 0.0  # 499: the client went away
    tokens_in_total: float = 0.0
    tokens_out_total: float = 0.0
    tokens_cache_read_total: float = 0.0
    tokens_cache_write_total: float = 0.0
    tokens_reasoning_total: float = 0.0
    tokens_estimated_total: float = 0.0  # of in + out, how many were estimated
    cost_usd: float = 0.0
    upstream_errors_total: float = 0.0
    upstream_429_frequency_total: float = 0.0
    upstream_429_concurrency_total: float = 0.0
    upstream_429_quota_total: float = 0.0
    upstream_429_congestion_total: float = 0.0
    retries_total: float = 0.0
    proxy_rate_limited_total: float = 0.0  # 429s the proxy made itself
    refusals_total: float = 0.0  # every answer the proxy made itself (its 429s included)
    limiter_increases_total: float = 0.0
    limiter_decreases_total: float = 0.0
    limiter_probes_total: float = 0.0

    # rates and ratios
    requests_per_s: float = 0.0
    error_ratio: float = 0.0  # (5xx) / requests
    tokens_in_per_s: float = 0.0
    tokens_out_per_s: float = 0.0
    upstream_429_ratio: float = 0.0  # upstream 429s / upstream attempts

    # latency, from merged histograms (seconds); None when no request of the kind finished
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None
    ttfb_p50: float | None = None
    ttfb_p95: float | None = None
    ttfb_p99: float | None = None
    refusal_wait_p50: float | None = None
    refusal_wait_p95: float | None = None
    refusal_wait_p99: float | None = None
    latency_buckets: Buckets = field(default_factory=dict)
    ttfb_buckets: Buckets = field(default_factory=dict)
    refusal_wait_buckets: Buckets = field(default_factory=dict)

    # gauges
    in_flight: float = 0.0
    in_flight_max: float = 0.0
    queued: float = 0.0
    workers: float = 0.0  # worker slots summed over replicas
    worker_utilization: float = 0.0  # in_flight / workers
    degraded_replicas: float = 0.0
    limiter_rate: float | None = None
    limiter_ceiling: float | None = None
    limiter_hold: float | None = None
    limiter_concurrency: float | None = None
    quota_used: dict[str, float] = field(default_factory=dict)  # window → used ratio
    quota_reset_at: dict[str, float] = field(default_factory=dict)  # window → epoch s

    models: dict[str, ModelFigures] = field(default_factory=dict)
    clients: dict[str, ClientFigures] = field(default_factory=dict)
