"""Per-client figures: each client key alias's answers, admissions by class, refusals by
reason, tokens and limiter wait, merged from real expositions, rolled up, capped and
stored (on SQLite and PostgreSQL)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from zai_proxy.collector.merge import RoundMerger, Scrape
from zai_proxy.collector.percentiles import merge_buckets, quantile
from zai_proxy.collector.rollup import (
    CLIENT_TOTALS,
    MAX_CLIENTS,
    OTHER_CLIENT,
    derive,
    downsample,
    fold_clients,
)
from zai_proxy.collector.snapshot import ClientFigures, Snapshot
from zai_proxy.collector.store import SnapshotStore
from zai_proxy.proxy.metrics import WAIT_BUCKETS, ProxyMetrics
from zai_proxy.proxy.usage import Usage
from zai_proxy.shared.proxy_metrics import ORIGIN_PROXY, ORIGIN_UPSTREAM

INF = math.inf


class Replica:
    """A proxy replica's metrics, rendered as its /metrics would be."""

    def __init__(self, variant: str = "production") -> None:
        self.registry = CollectorRegistry()
        self.metrics = ProxyMetrics(variant, 50, self.registry)

    def admit(self, client: str, wait: float, *, priority: str = "interactive") -> None:
        """One request of ``client`` the limiter admitted after ``wait``, answered 200."""
        self.metrics.client_waited(client, priority, wait)
        self.metrics.observe_request(
            "POST", "/v1/chat/completions", 200, "glm-4.6", client, 0.5, 0.1, 64, ORIGIN_UPSTREAM
        )
        self.metrics.observe_tokens("glm-4.6", client, Usage(100, 20), "usage")

    def refuse(self, client: str, reason: str, status: int = 429) -> None:
        """One request of ``client`` the proxy answered itself."""
        self.metrics.client_refused(client, reason)
        self.metrics.observe_request(
            "POST", "/v1/chat/completions", status, "glm-4.6", client, 0.01, None, 64, ORIGIN_PROXY
        )

    def scrape(self, target: str, time: float) -> Scrape:
        return Scrape.parse(target, time, generate_latest(self.registry).decode())


def wait_buckets(*waits: float) -> dict[float, float]:
    """The cumulative buckets of the proxy's wait ladder holding ``waits``."""
    buckets = {float(b): float(sum(w <= b for w in waits)) for b in WAIT_BUCKETS}
    return {**buckets, INF: float(len(waits))}


def test_a_round_gives_each_client_its_answers_admissions_refusals_tokens_and_wait() -> None:
    a, b = Replica(), Replica()
    merger = RoundMerger(5.0)
    a.admit("ide", 0.0)  # before the first round: primes only
    assert merger.merge(100.0, [a.scrape("a", 100.0), b.scrape("b", 100.0)]) == []

    ide_waits = [0.004, 0.02, 0.3]
    for wait in ide_waits[:2]:
        a.admit("ide", wait)
    b.admit("ide", ide_waits[2])
    b.admit("ci", 2.0, priority="batch")
    b.admit("ci", 0.07, priority="interactive")  # a request may ask for another class
    for _ in range(3):
        a.refuse("ci", "client_budget_rpm")
    b.refuse("ide", "proxy_rate_limited")
    [s] = merger.merge(105.0, [a.scrape("a", 105.0), b.scrape("b", 105.0)])

    assert set(s.clients) == {"ide", "ci"}
    ide, ci = s.clients["ide"], s.clients["ci"]
    assert (ide.requests, ide.requests_2xx, ide.admitted, ide.refused) == (4, 3, 3, 1)
    assert ide.refused_by == {"proxy_rate_limited": 1}
    assert ide.admitted_by_class == {"interactive": 3}
    assert (ide.tokens_in, ide.tokens_out) == (300, 60)
    assert ide.admitted_per_s == 3 / 5
    assert (ci.requests, ci.requests_2xx, ci.admitted, ci.refused) == (5, 2, 2, 3)
    assert ci.refused_by == {"client_budget_rpm": 3}
    assert ci.admitted_by_class == {"batch": 1, "interactive": 1}
    # The wait histogram merged over replicas and classes gives the percentiles.
    truth = wait_buckets(*ide_waits)
    assert ide.wait_buckets[INF] == 3
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        assert getattr(ide, f"wait_{name}") == pytest.approx(quantile(truth, q))
        assert getattr(ci, f"wait_{name}") == pytest.approx(quantile(wait_buckets(2.0, 0.07), q))
    # The variant's totals count the same answers.
    assert s.requests_total == ide.requests + ci.requests


def test_a_client_of_another_variant_is_not_counted_here() -> None:
    production, canary = Replica("production"), Replica("canary")
    merger = RoundMerger(5.0)
    merger.merge(100.0, [production.scrape("p", 100.0), canary.scrape("c", 100.0)])
    production.admit("ide", 0.01)
    canary.admit("ci", 0.01)
    found = {s.variant: s for s in merger.merge(105.0, [production.scrape("p", 105.0),
                                                       canary.scrape("c", 105.0)])}  # fmt: skip
    assert set(found["production"].clients) == {"ide"}
    assert set(found["canary"].clients) == {"ci"}


def figures(requests: float, *waits: float) -> ClientFigures:
    return ClientFigures(
        requests=requests,
        requests_2xx=requests,
        admitted=float(len(waits)),
        tokens_in=10 * requests,
        refused_by={"proxy_rate_limited": 1.0},
        refused=1.0,
        admitted_by_class={"interactive": float(len(waits))},
        wait_buckets=wait_buckets(*waits) if waits else {},
    )


def test_downsampling_sums_each_client_and_reads_its_wait_from_the_merged_buckets() -> None:
    first = Snapshot(ts=0, seconds=5, variant="v", clients={"ide": figures(2, 0.02, 0.4)})
    second = Snapshot(
        ts=5, seconds=5, variant="v", clients={"ide": figures(1, 3.0), "ci": figures(4, 0.2)}
    )
    out = downsample([derive(first), derive(second)], 0, 60)
    ide = out.clients["ide"]
    assert (ide.requests, ide.admitted, ide.refused, ide.tokens_in) == (3, 3, 2, 30)
    assert ide.refused_by == {"proxy_rate_limited": 2}
    assert ide.admitted_by_class == {"interactive": 3}
    # Rates are per second the snapshots cover (10 s), as the variant's are.
    assert ide.admitted_per_s == 3 / 10
    merged = merge_buckets(wait_buckets(0.02, 0.4), wait_buckets(3.0))
    assert ide.wait_p95 == pytest.approx(quantile(merged, 0.95))
    assert out.clients["ci"].requests == 4
    # The finer snapshots are not changed by the merge.
    assert first.clients["ide"].requests == 2


def test_past_the_cap_the_least_busy_clients_are_folded_into_other() -> None:
    many = {f"c{i:02d}": figures(float(i + 1), 0.01 * (i + 1)) for i in range(MAX_CLIENTS + 8)}
    folded = fold_clients(many)
    assert len(folded) == MAX_CLIENTS
    kept = sorted(many, key=lambda c: -many[c].requests)[: MAX_CLIENTS - 1]
    assert set(folded) == {*kept, OTHER_CLIENT}
    rest = [many[c] for c in many if c not in kept]
    assert folded[OTHER_CLIENT].requests == sum(f.requests for f in rest)
    assert folded[OTHER_CLIENT].wait_buckets[INF] == len(rest)
    assert fold_clients({"a": figures(1)}) == {"a": figures(1)}


@given(st.lists(st.integers(0, 50), min_size=1, max_size=3 * MAX_CLIENTS))
def test_folding_keeps_every_total(requests: list[int]) -> None:
    clients = {f"c{i}": figures(float(n), 0.5) for i, n in enumerate(requests)}
    folded = fold_clients(clients)
    assert len(folded) <= MAX_CLIENTS
    for name in CLIENT_TOTALS:
        assert sum(getattr(f, name) for f in folded.values()) == pytest.approx(
            sum(getattr(f, name) for f in clients.values())
        )


async def test_client_figures_are_stored_and_read_back_whole(store: SnapshotStore) -> None:
    snapshot = derive(
        Snapshot(
            ts=1795750000.0,
            seconds=5,
            variant="production",
            requests_total=5,
            clients={"ide": figures(2, 0.02, 0.4), "ci": figures(3)},
        )
    )
    await store.write([snapshot])
    [back] = await store.query("production", 1795750000.0, 1795750005.0)
    assert back.clients == snapshot.clients
    assert back.clients["ide"].wait_p95 == pytest.approx(quantile(wait_buckets(0.02, 0.4), 0.95))
