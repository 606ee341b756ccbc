"""One collector round: the scrapes of every target merged into a snapshot per variant.

Counters become per-target increases since that target's previous scrape, then are summed
over the targets of a variant; so a replica's restart, or a replica coming and going,
moves no total backwards and makes no spike:

- a target's first scrape (a new replica, one back after missing a round, or one last seen
  more than ``max_gap`` ago) only primes: it adds its gauges and counts as a replica, but
  no increase, unless its ``process_start_time_seconds`` is after the previous round
  (within the first round: after one interval ago): then the process is new and all it
  counted is new, so its whole counts are the increase; a variant whose every target
  primes this round gets no snapshot;
- a series that went down restarted: its increase is its new value (as Prometheus's
  ``increase`` reads a reset); a changed ``process_start_time_seconds`` marks every
  series of the target restarted; a histogram restarts as a whole (any bucket down, or
  other bounds);
- a series new on a known target counts from 0;
- a target missing from a round is forgotten, so what it counted while unseen is not
  attributed to the round it returns in;
- after a restart, ``restore`` hands back the baselines written with the last round
  (``baselines``, ADR 0014): a target of that round counts its first increase against its
  baseline when its process is the same (the same start time, or none on either side;
  then a series that went down is a reset), from its start when its process started after
  the baseline, and else only primes. A variant's snapshot that counted from a restored
  baseline covers the whole gap: ``ts`` where the stored rows end, ``seconds`` up to the
  end of the round, so its rates are averages over the downtime, not a spike.

Rates are increases over the round's interval. Histograms are merged bucket by bucket over
every series of a variant (all paths and models) before percentiles are read; the request
duration by its ``origin`` label: ``upstream`` into ``latency_buckets``, ``proxy`` into
``refusal_wait_buckets``, ``client`` (left before any answer) into neither. A duration
series without ``origin`` (a proxy from before ADR 0017) counts as ``upstream``. Gauges of a
variant are summed over its replicas (in flight, queued, workers, degraded replicas).

Requests by status: ``requests_total`` counts every answer (499 included); ``2xx`` is
200-299, ``4xx`` is 400-498 (429 included, 499 not: no answer reached the client), ``429``
is every 429 sent to the client (the upstream's passed on and the proxy's own),
``client_closed`` is 499, ``5xx`` is 500-599; 1xx and 3xx are only in ``requests_total``.

Upstream 429 ratio: 429s of the four upstream classes over upstream attempts, where
attempts = requests answered - the proxy's own 429s (those never went upstream) + retries.
Every other answer went upstream at least once, and each retry is one more attempt, so this
counts attempts exactly except for requests answered before their first attempt for another
reason (a body over the limit, a client that left while queued): a slight overcount.
``rollup.derive`` holds the formula, so coarser resolutions recompute it from totals.

Per client key alias (``Snapshot.clients``): answers and 2xx from ``proxy_requests_total``'s
``key`` label, tokens in and out from the token counters' ``key``, refusals by reason from
``proxy_client_refusals_total``, and the limiter wait from
``proxy_client_limiter_wait_seconds`` (its count is the admitted requests, split by
``class``), merged over the classes and thinned; series without the label (proxies from
before client keys) count for no client. At most ``rollup.MAX_CLIENTS`` aliases are kept.

Limiter figures come from the limiter's own exposition (any scraped target exporting
``limiter_*``; several limiter replicas agree, so their gauges are combined with max and
their decision increases summed, as only the leader counts decisions). They describe one
pool: the configured ``pool``, else the pool with the highest rate (the busiest key when
there are several); all of them (rate, ceiling, hold, concurrency, decisions) come from
that pool, and every variant's snapshot carries them. Without a limiter exposition (the
in-process limiter of ``zai-proxy up``), or without the configured pool in it, rate and
concurrency fall back to the proxies' ``proxy_limiter_rate`` and
``proxy_limiter_concurrency_limit`` (max over the variant's replicas), ceiling and hold stay
None and no decisions are counted. Quota windows (used ratio, reset time) come from the
limiter's quota gauges.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

from zai_proxy.collector.baselines import Baseline
from zai_proxy.collector.percentiles import merge_buckets, thin_buckets
from zai_proxy.collector.pricing import PriceTable, default_prices
from zai_proxy.collector.rollup import bucket_start, derive, fold_clients
from zai_proxy.collector.scrape_parse import (
    START_TIME,
    Buckets,
    Samples,
    SeriesKey,
    parse_exposition,
)
from zai_proxy.collector.snapshot import ClientFigures, ModelFigures, Snapshot
from zai_proxy.shared import limiter_metrics, proxy_metrics

# A previous scrape older than this many intervals only primes (see the module docstring).
DEFAULT_MAX_GAP_INTERVALS = 3.0

_UPSTREAM_429 = {
    "rate_frequency": "upstream_429_frequency_total",
    "rate_concurrency": "upstream_429_concurrency_total",
    "rate_quota": "upstream_429_quota_total",
    "rate_congestion": "upstream_429_congestion_total",
}
_TOKENS = {
    proxy_metrics.TOKEN_INPUT: ("tokens_in_total", "tokens_in"),
    proxy_metrics.TOKEN_OUTPUT: ("tokens_out_total", "tokens_out"),
    proxy_metrics.TOKEN_CACHE_READ: ("tokens_cache_read_total", "tokens_cache_read"),
    proxy_metrics.TOKEN_CACHE_WRITE: ("tokens_cache_write_total", "tokens_cache_write"),
    proxy_metrics.TOKEN_REASONING: ("tokens_reasoning_total", "tokens_reasoning"),
}
_SUMMED_GAUGES = {
    proxy_metrics.IN_FLIGHT: "in_flight",
    proxy_metrics.QUEUED: "queued",
    proxy_metrics.WORKERS: "workers",
    proxy_metrics.LIMITER_DEGRADED: "degraded_replicas",
}
_POOL_GAUGES = {
    limiter_metrics.RATE: "limiter_rate",
    limiter_metrics.CEILING: "limiter_ceiling",
    limiter_metrics.HOLD: "limiter_hold",
    limiter_metrics.CONCURRENCY: "limiter_concurrency",
}
_DECISIONS = {
    "increase": "limiter_increases_total",
    "decrease": "limiter_decreases_total",
    "probe": "limiter_probes_total",
}
_MODEL_FIELDS = tuple(f.name for f in fields(ModelFigures))


@dataclass(frozen=True, slots=True)
class Scrape:
    """One target's exposition, read at ``time`` (epoch seconds)."""

    target: str
    time: float
    samples: Samples

    @classmethod
    def parse(cls, target: str, time: float, text: str) -> Scrape:
        """A scrape from exposition text; raises ValueError when the text does not parse."""
        return cls(target, time, parse_exposition(text))


@dataclass(slots=True)
class _Increase:
    """One target's counter and histogram increases since its previous scrape."""

    counters: dict[SeriesKey, float] = field(default_factory=dict)
    histograms: dict[SeriesKey, Buckets] = field(default_factory=dict)


@dataclass(slots=True)
class _Limiter:
    """The limiter's figures for one round."""

    gauges: dict[str, float | None] = field(default_factory=dict)
    decisions: dict[str, float] = field(default_factory=dict)
    quota_used: dict[str, float] = field(default_factory=dict)
    quota_reset_at: dict[str, float] = field(default_factory=dict)
    present: bool = False


class RoundMerger:
    """Keeps each target's previous scrape and merges each round into per-variant snapshots."""

    def __init__(
        self,
        interval: float,
        prices: PriceTable | None = None,
        *,
        pool: str | None = None,
        max_gap: float | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self.interval = interval
        self.prices = prices if prices is not None else default_prices()
        self.pool = pool
        self.max_gap = max_gap if max_gap is not None else DEFAULT_MAX_GAP_INTERVALS * interval
        self._previous: dict[str, Scrape] = {}
        self._last_round: float | None = None
        self._covered_until: float | None = None  # end of the last round's interval
        # Baselines restored from the database, for the first round after a restart.
        self._restored: dict[str, Scrape] = {}
        self._resume_from: float | None = None

    def merge(self, now: float, scrapes: Iterable[Scrape]) -> list[Snapshot]:
        """Snapshots (one per variant with a baseline, by variant name) of the round at ``now``."""
        current = {scrape.target: scrape for scrape in scrapes}
        increases: dict[str, _Increase] = {}
        ts = bucket_start(now, self.interval)
        # A process that started after the last round (or within the first round's
        # interval) counted everything it shows since we last looked: count it all.
        fresh_after = self._last_round if self._last_round is not None else now - self.interval
        restored, self._restored = self._restored, {}
        resume_from = self._resume_from
        resumed: set[str] = set()  # targets counted from a restored baseline
        for target, scrape in current.items():
            previous = self._previous.get(target)
            baseline = restored.get(target)
            if previous is not None and 0 < scrape.time - previous.time <= self.max_gap:
                increases[target] = _increase(previous.samples, scrape.samples)
            elif baseline is not None and resume_from is not None and resume_from > ts:
                # Rows up to this round's bucket are stored already: count from the
                # restored baseline in the next round instead.
                self._restored[target] = baseline
            elif baseline is not None and _same_process(baseline, scrape):
                if scrape.time > baseline.time:
                    increases[target] = _increase(baseline.samples, scrape.samples)
                    resumed.add(target)
            elif (scrape.samples.start_time or 0.0) > (
                baseline.time if baseline is not None else fresh_after
            ):
                increases[target] = _increase(_NOTHING, scrape.samples)
                if baseline is not None:
                    resumed.add(target)  # restarted while the collector was down
        # Targets missing from this round are dropped: on return they prime again. Those
        # held on a restored baseline keep it as their previous scrape.
        self._previous = {t: s for t, s in current.items() if t not in self._restored}
        self._last_round = now
        self._covered_until = ts + self.interval
        if not self._restored:
            self._resume_from = None

        limiter = _limiter_figures(current.values(), increases.values(), self.pool)
        snapshots = []
        for variant, targets in sorted(_variants(current).items()):
            answered = [current[t] for t in sorted(targets)]
            counted = [increases[t] for t in sorted(targets) if t in increases]
            if not counted:
                continue
            snapshot = Snapshot(ts=ts, seconds=self.interval, variant=variant)
            if resume_from is not None and resume_from < ts and resumed & targets:
                # The first round after a restart: its increases cover the downtime, so
                # its row does too (a rate over the whole gap, not a spike in one round).
                snapshot.ts, snapshot.seconds = resume_from, ts + self.interval - resume_from
            snapshot.replicas = len(answered)
            self._add_counters(snapshot, variant, counted)
            _add_histograms(snapshot, variant, counted)
            _add_clients(snapshot, variant, counted)
            _add_gauges(snapshot, variant, answered)
            _add_limiter(snapshot, variant, answered, limiter)
            snapshots.append(derive(snapshot))
        return snapshots

    def forget(self, target: str) -> None:
        """Drop a target's previous scrape (its next scrape only primes)."""
        self._previous.pop(target, None)
        self._restored.pop(target, None)

    def baselines(self) -> list[Baseline]:
        """Each target's last scrape, as the database stores it with the last round."""
        if self._covered_until is None:
            return []
        return [
            Baseline(
                target=scrape.target,
                time=scrape.time,
                start_time=scrape.samples.start_time,
                covered_until=self._covered_until,
                counters=scrape.samples.counters,
                histograms=scrape.samples.histograms,
            )
            for _, scrape in sorted(self._previous.items())
        ]

    def restore(self, baselines: Iterable[Baseline]) -> int:
        """Count the next round against baselines stored before a restart; how many are used.

        Only the targets of the last round written (the newest ``covered_until``) are
        restored: a target missing from it had been forgotten, and only primes. The next
        round's snapshots that count from a restored baseline cover the time since that
        round, ``[covered_until, end of the round)``.
        """
        stored = list(baselines)
        if not stored:
            return 0
        resume_from = max(b.covered_until for b in stored)
        self._resume_from = resume_from
        self._restored = {
            b.target: Scrape(b.target, b.time, _samples_of(b))
            for b in stored
            if b.covered_until == resume_from
        }
        return len(self._restored)

    def _add_counters(self, s: Snapshot, variant: str, counted: list[_Increase]) -> None:
        models: dict[str, ModelFigures] = defaultdict(ModelFigures)
        for increase in counted:
            for (name, labels), value in increase.counters.items():
                label = dict(labels)
                if label.get("variant") != variant or value == 0:
                    continue
                if name == proxy_metrics.REQUESTS_TOTAL:
                    _add_request(s, label.get("status", ""), value)
                    models[label.get("model", proxy_metrics.UNKNOWN)].requests += value
                elif name in _TOKENS:
                    total, per_model = _TOKENS[name]
                    setattr(s, total, getattr(s, total) + value)
                    figures = models[label.get("model", proxy_metrics.UNKNOWN)]
                    setattr(figures, per_model, getattr(figures, per_model) + value)
                    if label.get("source") == "estimate" and name in (
                        proxy_metrics.TOKEN_INPUT,
                        proxy_metrics.TOKEN_OUTPUT,
                    ):
                        s.tokens_estimated_total += value
                elif name == proxy_metrics.UPSTREAM_ERRORS:
                    s.upstream_errors_total += value
                    kind = _UPSTREAM_429.get(label.get("type", ""))
                    if kind is not None:
                        setattr(s, kind, getattr(s, kind) + value)
                elif name == proxy_metrics.RETRIES:
                    s.retries_total += value
                elif name == proxy_metrics.RATE_LIMITED:
                    s.proxy_rate_limited_total += value
                elif name == proxy_metrics.REFUSALS:
                    s.refusals_total += value
        for model, figures in models.items():
            figures.cost_usd = self.prices.cost(
                model,
                tokens_in=figures.tokens_in,
                tokens_out=figures.tokens_out,
                cache_read=figures.tokens_cache_read,
                cache_write=figures.tokens_cache_write,
            )
            s.cost_usd += figures.cost_usd
        s.models = dict(sorted(models.items()))


_NOTHING = Samples()


def _samples_of(baseline: Baseline) -> Samples:
    gauges: dict[SeriesKey, float] = {}
    if baseline.start_time is not None:
        gauges[(START_TIME, ())] = baseline.start_time
    return Samples(dict(baseline.counters), gauges, dict(baseline.histograms))


def _same_process(baseline: Scrape, scrape: Scrape) -> bool:
    # The same process start time, or none on either side (a multi-process proxy: counted
    # on from the baseline, a series that went down read as a restart, as between rounds).
    return baseline.samples.start_time == scrape.samples.start_time


def _increase(previous: Samples, current: Samples) -> _Increase:
    restarted = (
        previous.start_time is not None
        and current.start_time is not None
        and previous.start_time != current.start_time
    )
    out = _Increase()
    for key, value in current.counters.items():
        before = None if restarted else previous.counters.get(key)
        out.counters[key] = value if before is None or value < before else value - before
    for key, buckets in current.histograms.items():
        before_buckets = None if restarted else previous.histograms.get(key)
        if (
            before_buckets is None
            or before_buckets.keys() != buckets.keys()
            or any(buckets[b] < before_buckets[b] for b in buckets)
        ):
            out.histograms[key] = dict(buckets)
        else:
            out.histograms[key] = {b: buckets[b] - before_buckets[b] for b in buckets}
    return out


def _variants(scrapes: Mapping[str, Scrape]) -> dict[str, set[str]]:
    # A target answers for every variant that labels any of its proxy series.
    found: dict[str, set[str]] = defaultdict(set)
    for target, scrape in scrapes.items():
        samples = scrape.samples
        for series in (samples.counters, samples.gauges, samples.histograms):
            for name, labels in series:
                if name.startswith("proxy_"):
                    variant = dict(labels).get("variant")
                    if variant is not None:
                        found[variant].add(target)
    return found


def _add_request(s: Snapshot, status: str, value: float) -> None:
    s.requests_total += value
    code = int(status) if status.isdigit() else 0
    if 200 <= code < 300:
        s.requests_2xx_total += value
    elif code == 499:
        s.client_closed_total += value
    elif 400 <= code < 500:
        s.requests_4xx_total += value
        if code == 429:
            s.requests_429_total += value
    elif 500 <= code < 600:
        s.requests_5xx_total += value


def _add_histograms(s: Snapshot, variant: str, counted: list[_Increase]) -> None:
    latency: list[Buckets] = []
    ttfb: list[Buckets] = []
    refusal_wait: list[Buckets] = []
    for increase in counted:
        for (name, labels), buckets in increase.histograms.items():
            label = dict(labels)
            if label.get("variant") != variant:
                continue
            if name == proxy_metrics.REQUEST_DURATION:
                origin = label.get("origin", proxy_metrics.ORIGIN_UPSTREAM)
                if origin == proxy_metrics.ORIGIN_UPSTREAM:
                    latency.append(buckets)
                elif origin == proxy_metrics.ORIGIN_PROXY:
                    refusal_wait.append(buckets)
            elif name == proxy_metrics.TIME_TO_FIRST_BYTE:
                ttfb.append(buckets)
    s.latency_buckets = _nonempty(merge_buckets(*latency))
    s.ttfb_buckets = _nonempty(merge_buckets(*ttfb))
    s.refusal_wait_buckets = _nonempty(merge_buckets(*refusal_wait))


_CLIENT_TOKENS = {
    proxy_metrics.TOKEN_INPUT: "tokens_in",
    proxy_metrics.TOKEN_OUTPUT: "tokens_out",
}


def _add_clients(s: Snapshot, variant: str, counted: list[_Increase]) -> None:
    clients: dict[str, ClientFigures] = defaultdict(ClientFigures)
    waits: dict[str, list[Buckets]] = defaultdict(list)
    for increase in counted:
        for (name, labels), value in increase.counters.items():
            label = dict(labels)
            if label.get("variant") != variant or value == 0:
                continue
            if name == proxy_metrics.REQUESTS_TOTAL and "key" in label:
                figures = clients[label["key"]]
                figures.requests += value
                status = label.get("status", "")
                if status.isdigit() and 200 <= int(status) < 300:
                    figures.requests_2xx += value
            elif name in _CLIENT_TOKENS and "key" in label:
                figures = clients[label["key"]]
                token_field = _CLIENT_TOKENS[name]
                setattr(figures, token_field, getattr(figures, token_field) + value)
            elif name == proxy_metrics.CLIENT_REFUSALS and "client" in label:
                figures = clients[label["client"]]
                figures.refused += value
                reason = label.get("reason", proxy_metrics.UNKNOWN)
                figures.refused_by[reason] = figures.refused_by.get(reason, 0.0) + value
        for (name, labels), buckets in increase.histograms.items():
            label = dict(labels)
            if name != proxy_metrics.CLIENT_WAIT or label.get("variant") != variant:
                continue
            admitted = buckets.get(math.inf, 0.0)
            if "client" not in label or admitted == 0:
                continue
            figures = clients[label["client"]]
            figures.admitted += admitted
            rank = label.get("class", proxy_metrics.UNKNOWN)
            figures.admitted_by_class[rank] = figures.admitted_by_class.get(rank, 0.0) + admitted
            waits[label["client"]].append(buckets)
    for client, found in waits.items():
        clients[client].wait_buckets = thin_buckets(merge_buckets(*found))
    s.clients = fold_clients(dict(clients))


def _nonempty(buckets: Buckets) -> Buckets:
    # A round with no finished request stores no buckets rather than a row of zeros.
    return buckets if any(buckets.values()) else {}


def _add_gauges(s: Snapshot, variant: str, answered: list[Scrape]) -> None:
    for scrape in answered:
        for (name, labels), value in scrape.samples.gauges.items():
            target_field = _SUMMED_GAUGES.get(name)
            if target_field is not None and dict(labels).get("variant") == variant:
                setattr(s, target_field, getattr(s, target_field) + value)
    s.in_flight_max = s.in_flight
    s.worker_utilization = s.in_flight / s.workers if s.workers > 0 else 0.0


def _add_limiter(s: Snapshot, variant: str, answered: list[Scrape], limiter: _Limiter) -> None:
    s.quota_used = dict(limiter.quota_used)
    s.quota_reset_at = dict(limiter.quota_reset_at)
    if limiter.present:
        for name, value in limiter.gauges.items():
            setattr(s, name, value)
        for name, value in limiter.decisions.items():
            setattr(s, name, value)
        return
    # No limiter exposition: what the variant's proxies see of the limit.
    for gauge, target_field in (
        (proxy_metrics.LIMITER_RATE, "limiter_rate"),
        (proxy_metrics.LIMITER_CONCURRENCY, "limiter_concurrency"),
    ):
        values = [
            value
            for scrape in answered
            for (name, labels), value in scrape.samples.gauges.items()
            if name == gauge and dict(labels).get("variant") == variant
        ]
        setattr(s, target_field, _finite(max(values)) if values else None)


def _limiter_figures(
    scrapes: Iterable[Scrape], increases: Iterable[_Increase], pool: str | None
) -> _Limiter:
    pools: dict[str, dict[str, float]] = defaultdict(dict)
    out = _Limiter()
    for scrape in scrapes:
        for (name, labels), value in scrape.samples.gauges.items():
            label = dict(labels)
            if name in _POOL_GAUGES and "pool" in label:
                gauges = pools[label["pool"]]
                gauges[name] = max(value, gauges.get(name, value))
            elif name == limiter_metrics.QUOTA_USED and "window" in label:
                window = label["window"]
                out.quota_used[window] = max(value, out.quota_used.get(window, value))
            elif name == limiter_metrics.QUOTA_RESET and "window" in label:
                window = label["window"]
                out.quota_reset_at[window] = max(value, out.quota_reset_at.get(window, value))
    chosen = _choose_pool(pools, pool)
    if chosen is None:
        return out
    out.present = True
    for name, target_field in _POOL_GAUGES.items():
        # +Inf is a limit not in force (no 429 seen, no 1302 seen): stored as none.
        out.gauges[target_field] = _finite(pools[chosen].get(name))
    out.decisions = dict.fromkeys(_DECISIONS.values(), 0.0)
    for increase in increases:
        for (name, labels), value in increase.counters.items():
            label = dict(labels)
            if name == limiter_metrics.DECISIONS and label.get("pool") == chosen:
                direction = _DECISIONS.get(label.get("direction", ""))
                if direction is not None:
                    out.decisions[direction] += value
    return out


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _choose_pool(pools: Mapping[str, Mapping[str, float]], wanted: str | None) -> str | None:
    if not pools:
        return None
    if wanted is not None:
        return wanted if wanted in pools else None
    # The highest rate; the name breaks ties so the choice is stable.
    return max(sorted(pools), key=lambda p: pools[p].get(limiter_metrics.RATE, float("-inf")))
