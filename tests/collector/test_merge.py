"""Scrapes of every replica merge into one snapshot per variant, from per-target increases.

The fixtures under ``fixtures/`` are real expositions: a proxy (variant canary) scraped
twice while it served the simulator's answers (200s, a passed-on quota 429, a 500, a client
that left, an estimate, cache reads and writes, many upstream 429s retried), a second proxy
(variant production) with a request in flight, and a limiter that had learned a ceiling.
The multi-round scenario renders expositions with the proxy's own ``ProxyMetrics`` and
``LimiterMetrics`` on fresh registries, so the text is the real format, label for label.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from zai_proxy.collector.baselines import Baseline, decode_series, encode_series
from zai_proxy.collector.merge import RoundMerger, Scrape
from zai_proxy.collector.percentiles import quantile
from zai_proxy.collector.pricing import ModelPrice, PriceTable
from zai_proxy.collector.scrape_parse import parse_exposition
from zai_proxy.collector.snapshot import ModelFigures, Snapshot
from zai_proxy.limiter.metrics import LimiterMetrics
from zai_proxy.proxy.buckets import LATENCY_BUCKETS
from zai_proxy.proxy.metrics import ProxyMetrics
from zai_proxy.proxy.usage import Usage
from zai_proxy.shared.proxy_metrics import ORIGIN_CLIENT, ORIGIN_PROXY, ORIGIN_UPSTREAM

FIXTURES = Path(__file__).parent / "fixtures"
INF = math.inf
PRICES = PriceTable({"glm-4.6": ModelPrice(1.0, 2.0), "glm-4.5-air": ModelPrice(0.5, 1.0)})


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def by_variant(snapshots: list[Snapshot]) -> dict[str, Snapshot]:
    return {s.variant: s for s in snapshots}


def bucket_around(seconds: float) -> tuple[float, float]:
    """The (lower, upper] bucket of the proxy's latency ladder that holds ``seconds``."""
    i = bisect_left(LATENCY_BUCKETS, seconds)
    return (LATENCY_BUCKETS[i - 1] if i else 0.0), LATENCY_BUCKETS[i]


class Replica:
    """A proxy replica's metrics, rendered as its /metrics would be."""

    def __init__(self, variant: str, workers: int = 8) -> None:
        self.variant, self.workers = variant, workers
        self.restart()

    def restart(self) -> None:
        """A new process: every counter starts from 0 again."""
        self.registry = CollectorRegistry()
        self.metrics = ProxyMetrics(self.variant, 50, self.registry)
        self.metrics.workers.set(self.workers)

    def serve(
        self,
        n: int,
        *,
        status: int = 200,
        model: str = "glm-4.6",
        seconds: float = 0.3,
        usage: Usage | None = None,
        source: str = "usage",
        origin: str = ORIGIN_UPSTREAM,
    ) -> None:
        """Answer n requests, each taking ``seconds`` and spending ``usage`` when it is a 200."""
        for _ in range(n):
            self.metrics.observe_request(
                "POST", "/v1/chat/completions", status, model, "anonymous", seconds,
                seconds / 3 if origin == ORIGIN_UPSTREAM else None, 512, origin,
            )  # fmt: skip
            if status == 200:
                self.metrics.observe_tokens(model, "anonymous", usage or Usage(100, 20), source)

    def scrape(self, target: str, time: float) -> Scrape:
        return Scrape.parse(target, time, generate_latest(self.registry).decode())


def test_real_scrapes_of_one_proxy_give_its_increases() -> None:
    merger = RoundMerger(5.0, PRICES)
    assert merger.merge(100.0, [Scrape.parse("p", 100.0, fixture("proxy_canary_1.prom"))]) == []
    [s] = merger.merge(105.0, [Scrape.parse("p", 105.0, fixture("proxy_canary_2.prom"))])

    assert (s.ts, s.seconds, s.variant, s.replicas) == (105.0, 5.0, "canary", 1)
    # 71 + 1 + 1 (a new series, counted from 0) 200s; three 429s, a 500, a 499.
    assert s.requests_total == 78
    assert (s.requests_2xx_total, s.requests_4xx_total, s.requests_429_total) == (73, 3, 3)
    assert (s.requests_5xx_total, s.client_closed_total) == (1, 1)
    assert s.requests_per_s == 78 / 5
    assert s.error_ratio == 1 / 78
    assert (s.tokens_in_total, s.tokens_out_total) == (1208, 1023)
    assert (s.tokens_cache_read_total, s.tokens_cache_write_total) == (27, 30)
    assert (s.tokens_reasoning_total, s.tokens_estimated_total) == (7, 9 + 15)
    assert (s.upstream_errors_total, s.upstream_429_frequency_total) == (50, 48)
    assert (s.upstream_429_quota_total, s.retries_total) == (1, 46)
    assert s.upstream_429_ratio == 49 / (78 + 46)
    # 16 of glm-4.6's 1136 input tokens were cache reads, priced 0 in this table.
    assert s.models["glm-4.6"] == ModelFigures(
        requests=76, tokens_in=1136, tokens_out=994, tokens_cache_read=16, tokens_reasoning=7,
        cost_usd=pytest.approx((1120 * 1.0 + 994 * 2.0) / 1e6),  # type: ignore[arg-type]
    )  # fmt: skip
    assert s.models["glm-4.5"].cost_usd == 0.0  # not in this price table
    assert s.cost_usd == pytest.approx((1120 + 994 * 2 + 9 * 0.5 + 15 * 1.0) / 1e6)
    # Every finished request is in the merged latency histogram; p50 is the 39th of 78.
    assert s.latency_buckets[INF] == 78
    assert (s.latency_buckets[5.0], s.latency_buckets[10.0]) == (33, 55)
    assert s.latency_p50 == pytest.approx(5 + 5 * (39 - 33) / (55 - 33))
    assert s.ttfb_buckets[INF] == 77  # the client that left got no first byte
    assert (s.workers, s.in_flight, s.worker_utilization) == (64, 0, 0)
    # No limiter scraped: the proxy's view of the limit, no ceiling.
    assert (s.limiter_rate, s.limiter_concurrency, s.limiter_ceiling) == (5.0, 256.0, None)


def test_a_real_limiter_exposition_gives_every_variant_the_pools_figures() -> None:
    merger = RoundMerger(5.0)
    first = [
        Scrape.parse("p", 0.0, fixture("proxy_production.prom")),
        Scrape.parse("l", 0.0, fixture("limiter.prom")),
    ]
    merger.merge(0.0, first)
    [s] = merger.merge(5.0, [Scrape(x.target, 5.0, x.samples) for x in first])
    assert s.variant == "production"
    assert (s.in_flight, s.in_flight_max, s.workers) == (1, 1, 64)
    assert s.worker_utilization == 1 / 64
    assert s.limiter_rate == pytest.approx(0.77636864987136)
    assert s.limiter_ceiling == pytest.approx(1.1890144)
    assert s.limiter_hold == pytest.approx(1.165234112)
    assert s.limiter_concurrency == 256.0
    assert s.quota_used == {"5h": 0.327, "weekly": 0.01635}
    assert s.quota_reset_at == {"5h": 1795769796.289, "weekly": 1796356596.289}
    assert s.requests_total == 0  # the same exposition twice: nothing happened


def test_two_replicas_of_two_variants_over_rounds_with_a_restart_and_a_vanishing() -> None:
    prod_a, prod_b = Replica("production"), Replica("production")
    canary_a, canary_b = Replica("canary", workers=4), Replica("canary", workers=4)
    limiter_registry = CollectorRegistry()
    limiter = LimiterMetrics(limiter_registry)
    limiter.rate.labels("key-1").set(12.5)
    limiter.concurrency.labels("key-1").set(64)
    merger = RoundMerger(5.0, PRICES)

    def round_at(t: float, *replicas: tuple[str, Replica]) -> dict[str, Snapshot]:
        scrapes = [replica.scrape(name, t) for name, replica in replicas]
        scrapes.append(Scrape.parse("limiter", t, generate_latest(limiter_registry).decode()))
        return by_variant(merger.merge(t + 0.4, scrapes))

    everyone = (
        ("prod-a", prod_a),
        ("prod-b", prod_b),
        ("canary-a", canary_a),
        ("canary-b", canary_b),
    )

    # Round 0: what was served before the collector started only primes.
    prod_a.serve(5)
    prod_b.serve(3)
    canary_a.serve(2)
    canary_b.serve(4)
    assert round_at(1000.0, *everyone) == {}

    # Round 1: increases since round 0, summed per variant.
    prod_a.serve(10)
    prod_b.serve(4)
    prod_b.serve(1, status=500, seconds=2.0)
    prod_a.metrics.in_flight.inc(3)
    prod_b.metrics.in_flight.inc(1)
    canary_a.serve(3, model="glm-4.5-air", usage=Usage(50, 10), source="estimate")
    canary_b.serve(2)
    canary_b.serve(1, status=429)
    for _ in range(3):
        canary_b.metrics.upstream_error("rate_frequency")
    canary_b.metrics.retry("rate_frequency")
    canary_b.metrics.retry("rate_frequency")
    limiter.decisions.labels("key-1", "decrease").inc()
    snaps = round_at(1005.0, *everyone)
    prod, canary = snaps["production"], snaps["canary"]

    assert (prod.ts, prod.seconds, prod.replicas) == (1005.0, 5.0, 2)
    assert (prod.requests_total, prod.requests_2xx_total, prod.requests_5xx_total) == (15, 14, 1)
    assert prod.requests_per_s == 3.0
    assert (prod.tokens_in_total, prod.tokens_out_total) == (1400, 280)
    assert prod.tokens_estimated_total == 0
    assert prod.cost_usd == pytest.approx((1400 * 1.0 + 280 * 2.0) / 1e6)
    # 14 requests of 0.3 s and one of 2 s.
    bounds = (*LATENCY_BUCKETS, INF)
    assert prod.latency_buckets == {b: 0 if b < 0.3 else 14 if b < 2.0 else 15 for b in bounds}
    low, high = bucket_around(0.3)
    assert prod.latency_p50 == pytest.approx(low + (high - low) * 7.5 / 14)
    low, high = bucket_around(2.0)
    assert prod.latency_p99 == pytest.approx(low + (high - low) * 0.85)
    assert (prod.in_flight, prod.workers, prod.worker_utilization) == (4, 16, 0.25)
    assert (prod.limiter_rate, prod.limiter_concurrency) == (12.5, 64)
    assert prod.limiter_decreases_total == 1

    assert (canary.replicas, canary.requests_total, canary.requests_2xx_total) == (2, 6, 5)
    assert (canary.requests_4xx_total, canary.requests_429_total) == (1, 1)
    assert (canary.tokens_in_total, canary.tokens_out_total) == (150 + 200, 30 + 40)
    assert canary.tokens_estimated_total == 150 + 30
    assert (canary.upstream_429_frequency_total, canary.retries_total) == (3, 2)
    assert canary.upstream_429_ratio == 3 / (6 + 2)
    assert canary.models["glm-4.5-air"].cost_usd == pytest.approx((150 * 0.5 + 30 * 1.0) / 1e6)
    assert canary.limiter_decreases_total == 1  # the limiter's figures go to every variant

    # Round 2: prod-b restarted (its counters are below their last values: a reset), canary-b
    # cannot be scraped while it serves 5.
    prod_a.serve(1)
    prod_b.restart()
    prod_b.serve(2)
    canary_a.serve(1)
    canary_b.serve(5)
    snaps = round_at(1010.0, ("prod-a", prod_a), ("prod-b", prod_b), ("canary-a", canary_a))
    prod, canary = snaps["production"], snaps["canary"]
    assert (prod.replicas, prod.requests_total, prod.requests_5xx_total) == (2, 3, 0)
    assert prod.latency_buckets[INF] == 3
    assert prod.tokens_in_total == 300
    assert (prod.in_flight, prod.workers) == (3, 16)  # the restarted replica has none in flight
    assert (canary.replicas, canary.requests_total) == (1, 1)
    assert prod.limiter_decreases_total == 0

    # Round 3: canary-b is back with everything it counted meanwhile; it only primes again.
    canary_a.serve(2)
    canary_b.serve(1)
    snaps = round_at(1015.0, *everyone)
    prod, canary = snaps["production"], snaps["canary"]
    assert (canary.replicas, canary.requests_total) == (2, 2)
    assert (prod.replicas, prod.requests_total, prod.requests_per_s) == (2, 0, 0)
    assert (prod.latency_buckets, prod.latency_p50) == ({}, None)

    # Round 4: canary-b counts again, from its round 3 values.
    canary_b.serve(4)
    snaps = round_at(1020.0, *everyone)
    assert (snaps["canary"].requests_total, snaps["canary"].latency_buckets[INF]) == (4, 4)


def test_no_counter_ever_goes_backwards_or_spikes() -> None:
    # One replica restarting every third round while it serves 3 a round: 3 each round. (A
    # restart is seen when a series ends below its last value, as in Prometheus, or when
    # process_start_time_seconds changes.)
    replica = Replica("v")
    merger = RoundMerger(5.0)
    merger.merge(0.0, [replica.scrape("r", 0.0)])
    for i in range(1, 10):
        if i % 3 == 0:
            replica.restart()
        replica.serve(3)
        [s] = merger.merge(5.0 * i, [replica.scrape("r", 5.0 * i)])
        assert s.requests_total == 3
        assert s.latency_buckets[INF] == 3


def test_a_histogram_that_went_down_restarts_as_a_whole() -> None:
    before = """# TYPE proxy_request_duration_seconds histogram
proxy_request_duration_seconds_bucket{le="0.1",variant="v"} 5.0
proxy_request_duration_seconds_bucket{le="1.0",variant="v"} 9.0
proxy_request_duration_seconds_bucket{le="+Inf",variant="v"} 10.0
"""
    after = before.replace("5.0", "1.0").replace("9.0", "3.0").replace("10.0", "3.0")
    merger = RoundMerger(5.0)
    merger.merge(0.0, [Scrape.parse("r", 0.0, before)])
    [s] = merger.merge(5.0, [Scrape.parse("r", 5.0, after)])
    assert s.latency_buckets == {0.1: 1.0, 1.0: 3.0, INF: 3.0}


def test_a_new_process_start_time_resets_every_series_of_the_target() -> None:
    def exposition(start: float, requests: float) -> str:
        return f"""# TYPE process_start_time_seconds gauge
process_start_time_seconds {start}
# TYPE proxy_requests_total counter
proxy_requests_total{{status="200",variant="v"}} {requests}
"""

    merger = RoundMerger(5.0)
    merger.merge(0.0, [Scrape.parse("r", 0.0, exposition(100.0, 4))])
    # More than before, but a new process: all 9 are new.
    [s] = merger.merge(5.0, [Scrape.parse("r", 5.0, exposition(103.0, 9))])
    assert s.requests_total == 9
    [s] = merger.merge(10.0, [Scrape.parse("r", 10.0, exposition(103.0, 12))])
    assert s.requests_total == 3


def test_a_target_last_seen_too_long_ago_only_primes() -> None:
    replica = Replica("v")
    merger = RoundMerger(5.0)
    merger.merge(0.0, [replica.scrape("r", 0.0)])
    replica.serve(50)
    assert merger.merge(30.0, [replica.scrape("r", 30.0)]) == []
    replica.serve(2)
    [s] = merger.merge(35.0, [replica.scrape("r", 35.0)])
    assert s.requests_total == 2


def test_the_snapshot_time_is_the_round_time_aligned_to_the_interval() -> None:
    replica = Replica("v")
    merger = RoundMerger(5.0)
    merger.merge(1000.2, [replica.scrape("r", 1000.2)])
    [s] = merger.merge(1004.9, [replica.scrape("r", 1004.9)])
    assert (s.ts, s.seconds) == (1000.0, 5.0)


def pools_exposition(rates: dict[str, float], decisions: dict[str, int]) -> str:
    registry = CollectorRegistry()
    limiter = LimiterMetrics(registry)
    for pool, rate in rates.items():
        limiter.rate.labels(pool).set(rate)
        limiter.ceiling.labels(pool).set(rate * 2)
    for pool, count in decisions.items():
        limiter.decisions.labels(pool, "increase").inc(count)
    return generate_latest(registry).decode()


@pytest.mark.parametrize(
    ("pool", "rate", "increases"),
    [
        (None, 30.0, 2 + 5),  # the pool with the highest rate, its decisions over 2 limiters
        ("key-a", 10.0, 1 + 4),  # the configured pool
        ("key-missing", 7.0, 0),  # configured but absent: the proxies' view
    ],
)
def test_limiter_figures_describe_one_pool(pool: str | None, rate: float, increases: int) -> None:
    replica = Replica("v")
    replica.metrics.limiter_rate.set(7.0)
    merger = RoundMerger(5.0, pool=pool)
    rates = {"key-a": 10.0, "key-b": 30.0}
    merger.merge(
        0.0,
        [
            replica.scrape("r", 0.0),
            Scrape.parse("l1", 0.0, pools_exposition(rates, {"key-a": 1, "key-b": 1})),
            Scrape.parse("l2", 0.0, pools_exposition(rates, {})),
        ],
    )
    [s] = merger.merge(
        5.0,
        [
            replica.scrape("r", 5.0),
            Scrape.parse("l1", 5.0, pools_exposition(rates, {"key-a": 2, "key-b": 3})),
            Scrape.parse("l2", 5.0, pools_exposition(rates, {"key-a": 4, "key-b": 5})),
        ],
    )
    assert s.limiter_rate == rate
    assert s.limiter_increases_total == increases
    assert s.limiter_ceiling == (rate * 2 if pool != "key-missing" else None)


def test_a_target_with_no_variant_makes_no_snapshot() -> None:
    merger = RoundMerger(5.0)
    limiter_only = [Scrape.parse("l", 0.0, fixture("limiter.prom"))]
    assert merger.merge(0.0, limiter_only) == []
    assert merger.merge(5.0, [Scrape("l", 5.0, limiter_only[0].samples)]) == []


def test_parsing_keeps_only_the_collectors_metrics() -> None:
    samples = parse_exposition(fixture("proxy_canary_2.prom"))
    names = {name for name, _ in [*samples.counters, *samples.gauges, *samples.histograms]}
    assert all(name.startswith("proxy_") for name in names)
    assert "proxy_requests_total" in names
    assert "proxy_request_duration_seconds" in names  # histograms by family name
    assert samples.start_time is None


def test_an_exposition_that_does_not_parse_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a Prometheus text exposition"):
        Scrape.parse("r", 0.0, 'proxy_requests_total{status="200" 1\n')


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        RoundMerger(0)


def test_quantiles_of_a_round_match_its_buckets() -> None:
    replica = Replica("v")
    merger = RoundMerger(5.0)
    merger.merge(0.0, [replica.scrape("r", 0.0)])
    replica.serve(5, seconds=0.02)
    replica.serve(5, seconds=4.0)
    [s] = merger.merge(5.0, [replica.scrape("r", 5.0)])
    assert s.latency_p50 == quantile(s.latency_buckets, 0.5) == pytest.approx(0.025)
    assert s.latency_p95 == quantile(s.latency_buckets, 0.95)
    assert s.ttfb_p99 == quantile(s.ttfb_buckets, 0.99)


def test_a_forgotten_target_primes_again() -> None:
    replica = Replica("v")
    merger = RoundMerger(5.0)
    merger.merge(0.0, [replica.scrape("r", 0.0)])
    replica.serve(2)
    merger.forget("r")
    assert merger.merge(5.0, [replica.scrape("r", 5.0)]) == []


# Baselines restored after a restart (ADR 0014)


def restarted(merger: RoundMerger, interval: float = 5.0) -> RoundMerger:
    """A new merger restored from ``merger``'s baselines, through their stored JSON form."""
    stored = [
        Baseline(b.target, b.time, b.start_time, b.covered_until, *decode_series(encode_series(b)))
        for b in merger.baselines()
    ]
    fresh = RoundMerger(interval)
    fresh.restore(stored)
    return fresh


def test_a_restored_baseline_gives_the_exact_increase_over_the_downtime() -> None:
    replica = Replica("v")
    merger = RoundMerger(5.0)
    merger.merge(2.5, [replica.scrape("r", 5.1)])
    replica.serve(3, seconds=0.3)
    [before] = merger.merge(7.5, [replica.scrape("r", 10.1)])
    assert (before.ts, before.seconds, before.requests_total) == (5.0, 5.0, 3.0)

    # Killed after that round was written; 7 requests while down, 2 more in the
    # restarted collector's first round (the one at 60).
    replica.serve(7, seconds=0.3)
    replica.serve(2, status=500, seconds=2.0)
    again = restarted(merger)
    [first] = again.merge(57.5, [replica.scrape("r", 60.1)])

    # Every request since the last written round, in one row that covers the whole gap.
    assert (first.ts, first.seconds) == (10.0, 50.0)
    assert (first.requests_total, first.requests_2xx_total, first.requests_5xx_total) == (
        9.0,
        7.0,
        2.0,
    )
    assert first.tokens_in_total == 700 and first.tokens_out_total == 140  # 200s only
    assert first.requests_per_s == pytest.approx(9 / 50)
    assert first.latency_buckets[INF] == 9 and first.latency_buckets[1.0] == 7
    # Then rounds as usual.
    replica.serve(1)
    [next_round] = again.merge(62.5, [replica.scrape("r", 65.1)])
    assert (next_round.ts, next_round.seconds, next_round.requests_total) == (60.0, 5.0, 1.0)


def start_exposition(start: float, requests: float) -> str:
    return f"""# TYPE process_start_time_seconds gauge
process_start_time_seconds {start}
# TYPE proxy_requests_total counter
proxy_requests_total{{status="200",variant="v"}} {requests}
"""


def test_a_process_restarted_during_the_downtime_counts_from_its_start() -> None:
    merger = RoundMerger(5.0)
    merger.merge(2.5, [Scrape.parse("r", 5.1, start_exposition(1.0, 10))])
    merger.merge(7.5, [Scrape.parse("r", 10.1, start_exposition(1.0, 14))])
    # The same process: the increase since the baseline.
    [same] = restarted(merger).merge(37.5, [Scrape.parse("r", 40.1, start_exposition(1.0, 30))])
    assert (same.ts, same.seconds, same.requests_total) == (10.0, 30.0, 16.0)
    # A process started after the baseline: all it counted (the old one's last counts
    # after the baseline are unknowable).
    [new] = restarted(merger).merge(37.5, [Scrape.parse("r", 40.1, start_exposition(20.0, 5))])
    assert (new.ts, new.seconds, new.requests_total) == (10.0, 30.0, 5.0)
    # Another process started before the baseline: nothing to count from, it primes.
    assert restarted(merger).merge(37.5, [Scrape.parse("r", 40.1, start_exposition(2.0, 5))]) == []


def test_without_a_start_time_a_counter_below_its_baseline_is_a_reset() -> None:
    replica = Replica("v")
    merger = RoundMerger(5.0)
    replica.serve(5)
    merger.merge(2.5, [replica.scrape("r", 5.1)])
    replica.restart()
    replica.serve(2)
    [s] = restarted(merger).merge(17.5, [replica.scrape("r", 20.1)])
    assert (s.ts, s.requests_total) == (5.0, 2.0)


def test_only_the_targets_of_the_last_written_round_are_restored() -> None:
    a, b = Replica("v"), Replica("v")
    merger = RoundMerger(5.0)
    merger.merge(2.5, [a.scrape("a", 5.1), b.scrape("b", 5.1)])
    old = merger.baselines()
    merger.merge(7.5, [a.scrape("a", 10.1)])  # b missing: forgotten
    stored = {x.target: x for x in old} | {x.target: x for x in merger.baselines()}
    a.serve(2)
    b.serve(4)
    again = RoundMerger(5.0)
    assert again.restore(stored.values()) == 1
    [s] = again.merge(17.5, [a.scrape("a", 20.1), b.scrape("b", 20.1)])
    assert (s.ts, s.seconds, s.requests_total, s.replicas) == (10.0, 10.0, 2.0, 2)


def test_a_first_round_inside_the_stored_rows_waits_for_the_next() -> None:
    replica = Replica("v")
    merger = RoundMerger(5.0)
    merger.merge(7.5, [replica.scrape("r", 10.1)])  # rows stored up to 10
    replica.serve(3)
    again = restarted(merger)
    # A round labelled 5 (a wall clock set back): its row is stored already.
    assert again.merge(2.5, [replica.scrape("r", 10.5)]) == []
    replica.serve(1)
    [s] = again.merge(12.5, [replica.scrape("r", 15.1)])
    assert (s.ts, s.seconds, s.requests_total) == (10.0, 5.0, 4.0)


def test_a_limit_not_in_force_is_stored_as_none_not_infinity() -> None:
    # No 429 seen: the limiter exports its rate and cap as +Inf; the proxies do too.
    replica = Replica("v")
    replica.metrics.limiter_rate.set(float("inf"))
    replica.metrics.limiter_concurrency.set(float("inf"))
    registry = CollectorRegistry()
    limiter = LimiterMetrics(registry)
    limiter.rate.labels("key-a").set(float("inf"))
    limiter.concurrency.labels("key-a").set(float("inf"))
    exposition = generate_latest(registry).decode()
    for pool in ("key-a", "key-missing"):
        merger = RoundMerger(5.0, pool=pool)
        merger.merge(0.0, [replica.scrape("r", 0.0), Scrape.parse("l", 0.0, exposition)])
        [s] = merger.merge(5.0, [replica.scrape("r", 5.0), Scrape.parse("l", 5.0, exposition)])
        assert (s.limiter_rate, s.limiter_concurrency) == (None, None)


def test_latency_of_upstream_answers_is_kept_apart_from_refusals_and_clients_that_left() -> None:
    replica = Replica("production")
    merger = RoundMerger(5.0, PRICES)
    merger.merge(1000.0, [replica.scrape("p", 1000.0)])
    replica.serve(4, seconds=12.0)
    replica.serve(30, status=429, seconds=0.002, origin=ORIGIN_PROXY)
    for _ in range(30):
        replica.metrics.refusal("proxy_rate_limited")
    replica.serve(2, status=499, seconds=40.0, origin=ORIGIN_CLIENT)

    [s] = merger.merge(1005.0, [replica.scrape("p", 1005.0)])

    assert s.requests_total == 36
    assert s.latency_buckets[INF] == 4
    low, high = bucket_around(12.0)
    assert low < s.latency_p50 <= high  # type: ignore[operator]
    assert s.ttfb_buckets[INF] == 4
    assert s.refusals_total == 30
    assert s.refusal_wait_buckets[INF] == 30
    assert 0.001 < s.refusal_wait_p95 <= 0.0025  # type: ignore[operator]
