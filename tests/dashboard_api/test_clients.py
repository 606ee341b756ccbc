"""Per-client figures from the dashboard API over the seeded history: each point carries
its clients, and ``/api/metrics``'s ``clients`` is each client's whole range, summed over
the variants answered, equal to what its points add up to."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.dashboard_api.processes import TOKEN, Dashboard, RoundWriter
from tests.dashboard_api.seed import CLIENTS
from zai_proxy.collector.percentiles import merge_buckets, quantile

CLIENT_FIELDS = {
    "requests", "requests_2xx", "admitted", "refused", "tokens_in", "tokens_out",
    "refused_by", "admitted_by_class", "wait_buckets", "admitted_per_s", "wait_p50",
    "wait_p95", "wait_p99",
}  # fmt: skip
TOTALS = ("requests", "requests_2xx", "admitted", "refused", "tokens_in", "tokens_out")


def metrics(dashboard: Dashboard, **params: str) -> dict[str, Any]:
    answer = dashboard.get("/api/metrics", token=TOKEN, params=params)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def buckets(histogram: dict[str, Any]) -> dict[float, float]:
    return {**{bound: count for bound, count in histogram["buckets"]}, math.inf: histogram["count"]}


def test_each_point_carries_its_clients_with_their_wait_as_a_histogram(
    main_dashboard: Dashboard,
) -> None:
    series = metrics(main_dashboard, range="15m")["series"]
    for variant, points in series.items():
        expected = {client for client, (shares, *_) in CLIENTS.items() if variant in shares}
        for point in points:
            assert set(point["clients"]) == expected
            for figures in point["clients"].values():
                assert set(figures) == CLIENT_FIELDS
                assert figures["admitted"] + figures["refused"] == figures["requests"]
                assert figures["wait_buckets"]["count"] == pytest.approx(figures["admitted"])
                histogram = buckets(figures["wait_buckets"])
                assert figures["wait_p95"] == pytest.approx(quantile(histogram, 0.95))
        for point in points:
            ide = point["clients"]["ide"]
            assert ide["admitted_by_class"] == {"interactive": ide["admitted"]}


@pytest.mark.parametrize("span", ["5m", "1h", "24h", "7d"])
def test_the_clients_of_a_range_are_what_the_points_of_every_variant_add_up_to(
    main_dashboard: Dashboard, rounds: RoundWriter, span: str
) -> None:
    rounds.catch_up()
    answer = metrics(main_dashboard, range=span)
    clients, series = answer["clients"], answer["series"]
    assert set(clients) == set(CLIENTS)
    for client, shown in clients.items():
        points = [
            p["clients"][client] for ps in series.values() for p in ps if client in p["clients"]
        ]
        for name in TOTALS:
            assert shown[name] == pytest.approx(sum(p[name] for p in points)), name
        reasons = {reason for p in points for reason in p["refused_by"]}
        assert shown["refused_by"] == pytest.approx(
            {r: sum(p["refused_by"].get(r, 0.0) for p in points) for r in reasons}
        )
        merged = merge_buckets(*(buckets(p["wait_buckets"]) for p in points))
        assert shown["wait_buckets"]["count"] == pytest.approx(merged[math.inf])
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            assert shown[f"wait_{name}"] == pytest.approx(quantile(merged, q)), name
        # Admitted per second: each variant's admissions over the seconds its own points
        # cover (a point's rate says how many: a bucket may have missed rounds), the
        # variants' rates added, as the web UI reads them.
        rate = 0.0
        for points_of in series.values():
            covered = sum(p["requests_total"] / p["requests_per_s"] for p in points_of)
            rate += sum(p["clients"][client]["admitted"] for p in points_of
                        if client in p["clients"]) / covered  # fmt: skip
        assert shown["admitted_per_s"] == pytest.approx(rate)
    # ci refuses by its budget; it is batch, ide interactive.
    assert clients["ci"]["refused_by"].keys() == {"client_budget_rpm"}
    assert clients["ci"]["admitted_by_class"].keys() == {"batch"}
    assert clients["ide"]["admitted_by_class"].keys() == {"interactive"}
    assert clients["ide"]["wait_p95"] < clients["ci"]["wait_p95"]


def test_one_variants_clients_are_that_variants_own(main_dashboard: Dashboard) -> None:
    canary = metrics(main_dashboard, range="1h", variant="canary")
    assert set(canary["clients"]) == {"ide"}
    both = metrics(main_dashboard, range="1h")
    assert canary["clients"]["ide"]["requests"] < both["clients"]["ide"]["requests"]
    assert canary["clients"]["ide"]["requests"] == pytest.approx(
        both["summary"]["canary"]["clients"]["ide"]["requests"]
    )


def test_a_variant_with_no_point_answers_no_clients(main_dashboard: Dashboard) -> None:
    assert metrics(main_dashboard, range="1h", variant="nosuchvariant")["clients"] == {}


def test_the_newest_point_of_the_status_carries_its_clients(main_dashboard: Dashboard) -> None:
    status = main_dashboard.get("/api/status", token=TOKEN).json()
    latest = status["variants"]["production"]["latest"]
    assert set(latest["clients"]) == set(CLIENTS)
    assert latest["clients"]["ci"]["refused_by"].keys() <= {"client_budget_rpm"}
