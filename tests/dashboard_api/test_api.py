"""The dashboard's REST endpoints as a process, on eight days of seeded history."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path

import httpx
import pytest

from tests.dashboard_api.conftest import HEARTBEAT
from tests.dashboard_api.processes import TOKEN, Dashboard, RoundWriter
from zai_proxy.collector.percentiles import merge_buckets, quantile
from zai_proxy.dashboard_api.queries import RANGES

# Range → seconds per point: the table in zai_proxy.collector.queries.
STEPS = {"5m": 5, "15m": 5, "1h": 15, "6h": 120, "24h": 300, "7d": 3600}
# Every field of a point, as docs/dashboard-api.md lists them.
CONTRACT_FIELDS = {
    "ts", "seconds", "variant", "replicas", "requests_total", "requests_2xx_total",
    "requests_4xx_total", "requests_429_total", "requests_5xx_total", "client_closed_total",
    "requests_per_s", "error_ratio", "latency_p50", "latency_p95", "latency_p99", "ttfb_p50",
    "ttfb_p95", "ttfb_p99", "tokens_in_total", "tokens_out_total", "tokens_cache_read_total",
    "tokens_cache_write_total", "tokens_reasoning_total", "tokens_estimated_total",
    "tokens_in_per_s", "tokens_out_per_s", "cost_usd", "in_flight", "in_flight_max", "queued",
    "workers", "worker_utilization", "degraded_replicas", "upstream_errors_total",
    "upstream_429_ratio", "upstream_429_frequency_total", "upstream_429_concurrency_total",
    "upstream_429_quota_total", "upstream_429_congestion_total", "retries_total",
    "proxy_rate_limited_total", "limiter_rate", "limiter_ceiling", "limiter_hold",
    "limiter_concurrency", "limiter_increases_total", "limiter_decreases_total",
    "limiter_probes_total", "quota_used", "quota_reset_at", "models", "refusals_total",
    "refusal_wait_p50", "refusal_wait_p95", "refusal_wait_p99", "latency_buckets",
    "ttfb_buckets", "refusal_wait_buckets", "clients",
}  # fmt: skip
MODEL_FIELDS = {
    "requests", "tokens_in", "tokens_out", "tokens_cache_read", "tokens_cache_write",
    "tokens_reasoning", "cost_usd",
}  # fmt: skip


def metrics(dashboard: Dashboard, **params: str) -> httpx.Response:
    return dashboard.get("/api/metrics", token=TOKEN, params=params)


@pytest.mark.parametrize(("span", "step"), STEPS.items())
def test_each_range_answers_both_variants_at_its_resolution_without_gaps(
    main_dashboard: Dashboard, rounds: RoundWriter, span: str, step: int
) -> None:
    rounds.catch_up()
    answer = metrics(main_dashboard, range=span)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["range"], body["variant"], body["step"]) == (span, "all", step)
    assert body["end"] - body["start"] == pytest.approx(RANGES[span])  # type: ignore[index]
    assert set(body["series"]) == {"production", "canary"}
    expected = RANGES[span] // step  # type: ignore[index]
    for variant, points in body["series"].items():
        assert expected - 1 <= len(points) <= expected + 1, (variant, len(points))
        times = [point["ts"] for point in points]
        assert all(later - earlier == step for earlier, later in pairwise(times))
        assert body["start"] - step < times[0] and times[-1] < body["end"]
        assert {point["seconds"] for point in points} == {step}
        assert {point["variant"] for point in points} == {variant}
        assert all(point["requests_total"] > 0 for point in points)


def test_the_contract_document_lists_every_field_of_a_point() -> None:
    """docs/dashboard-api.md's example point has exactly the fields the API sends."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "dashboard-api.md").read_text()
    example = text.split("## Point", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert set(json.loads(example)) == CONTRACT_FIELDS


def test_a_point_carries_every_field_of_the_contract(main_dashboard: Dashboard) -> None:
    points = metrics(main_dashboard, range="15m").json()["series"]["production"]
    point = points[-1]
    assert set(point) == CONTRACT_FIELDS
    assert set(point["models"]) == {"glm-4.6", "glm-4.5-air"}
    assert set(point["models"]["glm-4.6"]) == MODEL_FIELDS
    assert set(point["quota_used"]) == {"5h", "weekly"}
    assert 0 < point["latency_p50"] < point["latency_p95"] < point["latency_p99"]
    assert point["requests_per_s"] == pytest.approx(point["requests_total"] / point["seconds"])
    histogram = point["latency_buckets"]
    assert set(histogram) == {"count", "buckets"}
    bounds = [bound for bound, _ in histogram["buckets"]]
    counts = [count for _, count in histogram["buckets"]]
    assert bounds == sorted(bounds) and counts == sorted(counts)
    assert counts[-1] <= histogram["count"]


def test_a_points_histogram_gives_back_the_percentiles_the_point_carries(
    main_dashboard: Dashboard,
) -> None:
    for point in metrics(main_dashboard, range="1h").json()["series"]["production"]:
        for family in ("latency", "ttfb"):
            histogram = point[f"{family}_buckets"]
            buckets = {**dict(histogram["buckets"]), math.inf: histogram["count"]}
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
                assert quantile(buckets, q) == pytest.approx(point[f"{family}_{name}"])


def test_the_summary_is_the_whole_range_read_from_the_merged_histograms(
    main_dashboard: Dashboard,
) -> None:
    answer = metrics(main_dashboard, range="1h").json()
    for variant, points in answer["series"].items():
        summary = answer["summary"][variant]
        assert summary["requests_total"] == pytest.approx(sum(p["requests_total"] for p in points))
        merged = merge_buckets(
            *({**dict(p["latency_buckets"]["buckets"]), math.inf: p["latency_buckets"]["count"]}
              for p in points)
        )  # fmt: skip
        assert summary["latency_p95"] == pytest.approx(quantile(merged, 0.95))
        assert summary["latency_buckets"]["count"] == pytest.approx(merged[math.inf])


def test_the_variant_filter_answers_one_series(main_dashboard: Dashboard) -> None:
    everything = metrics(main_dashboard, range="6h").json()
    canary = metrics(main_dashboard, range="6h", variant="canary").json()
    assert canary["variant"] == "canary"
    assert list(canary["series"]) == ["canary"]
    assert len(canary["series"]["canary"]) == len(everything["series"]["canary"])
    # Canary serves a tenth of production's traffic.
    ratio = sum(p["requests_total"] for p in canary["series"]["canary"]) / sum(
        p["requests_total"] for p in everything["series"]["production"]
    )
    assert 0.05 < ratio < 0.2


def test_a_well_formed_variant_without_rows_answers_no_points(main_dashboard: Dashboard) -> None:
    answer = metrics(main_dashboard, range="5m", variant="staging")
    assert answer.status_code == 200
    assert answer.json()["series"] == {"staging": []}


def test_the_defaults_are_an_hour_of_every_variant(main_dashboard: Dashboard) -> None:
    body = main_dashboard.get("/api/metrics", token=TOKEN).json()
    assert (body["range"], body["variant"], body["step"]) == ("1h", "all", 15)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"range": "2h"}, "range"),
        ({"range": ""}, "range"),
        ({"variant": "prod canary"}, "variant"),
        ({"variant": ""}, "variant"),
        ({"variant": "x" * 65}, "variant"),
        ({"variant": "../etc"}, "variant"),
    ],
)
def test_bad_query_parameters_answer_400_naming_the_parameter(
    main_dashboard: Dashboard, params: dict[str, str], named: str
) -> None:
    answer = metrics(main_dashboard, **params)
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert f"query parameter '{named}'" in detail
    assert len(detail) < 300


def test_a_huge_bad_value_is_not_echoed_whole(main_dashboard: Dashboard) -> None:
    detail = metrics(main_dashboard, variant="v" * 5000).json()["detail"]
    assert "vvvv" in detail and len(detail) < 300


def test_the_range_error_lists_the_ranges(main_dashboard: Dashboard) -> None:
    detail = metrics(main_dashboard, range="2h").json()["detail"]
    assert "'5m', '15m', '1h', '6h', '24h' or '7d'" in detail
    assert "'2h'" in detail


def test_a_malformed_last_event_id_answers_400(main_dashboard: Dashboard) -> None:
    for headers, params in (({"Last-Event-ID": "yesterday"}, {}), ({}, {"last_event_id": "-1"})):
        answer = main_dashboard.get("/api/events", token=TOKEN, headers=headers, params=params)
        assert answer.status_code == 400
        assert "Last-Event-ID" in answer.json()["detail"] or "last_event_id" in answer.text


def test_status_shows_the_newest_point_of_each_variant_and_its_age(
    main_dashboard: Dashboard, rounds: RoundWriter
) -> None:
    newest = rounds.catch_up()[-1]
    body = main_dashboard.get("/api/status", token=TOKEN).json()
    assert body["stale_after"] == 15
    assert set(body["variants"]) == {"production", "canary"}
    for status in body["variants"].values():
        assert status["latest"]["ts"] == newest
        assert status["latest"]["seconds"] == 5
        assert 0 <= status["age_seconds"] < 15
        assert status["stale"] is False


def test_config_tells_the_ui_what_it_needs(main_dashboard: Dashboard) -> None:
    body = main_dashboard.get("/api/config", token=TOKEN).json()
    assert body == {
        "version": "0.1.0",
        "variants": ["canary", "production"],
        "ranges": ["5m", "15m", "1h", "6h", "24h", "7d"],
        "scrape_interval": 5,
        "sse_heartbeat_seconds": HEARTBEAT,
        "sse_replay_seconds": 900,
        "limiter": {"configured": True},
    }


def test_the_limiter_state_comes_from_the_real_limiter(main_dashboard: Dashboard) -> None:
    body = main_dashboard.get("/api/limiter", token=TOKEN).json()
    assert body["available"] is True
    state = body["state"]
    assert state["pools"] and state["tick_seconds"] > 0
    assert "window_seconds" not in state
    pool = next(iter(state["pools"].values()))
    assert {"rate", "limited", "ceiling", "hold", "concurrency_limit", "bounds"} <= set(pool)
    # No request was ever refused: no learned limit and no cap (null, not a number).
    assert (pool["ceiling"], pool["concurrency_limit"]) == (None, None)
    assert pool["limited"] is (pool["rate"] is not None)


@pytest.mark.parametrize(
    "path",
    ["/api/metrics", "/api/status", "/api/config", "/api/limiter", "/api/events",
     "/api/openapi.json", "/api/nothing", "/", "/some/page"],
)  # fmt: skip
def test_everything_but_healthz_needs_the_token(main_dashboard: Dashboard, path: str) -> None:
    for token in (None, "wrong-token", TOKEN[:-1], TOKEN + "x"):
        answer = main_dashboard.get(path, token=token)
        assert answer.status_code == 401, (path, token)
        assert answer.headers["www-authenticate"] == "Bearer"
    assert main_dashboard.get(path, params={"token": "wrong-token"}).status_code == 401


def test_the_token_is_accepted_as_bearer_header_or_in_the_query(
    main_dashboard: Dashboard,
) -> None:
    assert main_dashboard.get("/api/status", token=TOKEN).status_code == 200
    assert main_dashboard.get("/api/status", params={"token": TOKEN}).status_code == 200
    lower = {"Authorization": f"bearer {TOKEN}"}
    assert main_dashboard.get("/api/status", headers=lower).status_code == 200
    basic = {"Authorization": f"Basic {TOKEN}"}
    assert main_dashboard.get("/api/status", headers=basic).status_code == 401


def test_a_page_opened_with_the_token_sets_a_cookie_the_api_accepts(
    main_dashboard: Dashboard,
) -> None:
    page = main_dashboard.get("/", params={"token": TOKEN})
    assert page.status_code == 200
    cookie = page.cookies.get("zai_dashboard_token")
    assert cookie == TOKEN
    assert "httponly" in page.headers["set-cookie"].lower()
    assert "samesite=strict" in page.headers["set-cookie"].lower()
    with_cookie = main_dashboard.get(
        "/api/status", headers={"Cookie": f"zai_dashboard_token={cookie}"}
    )
    assert with_cookie.status_code == 200
    assert "set-cookie" not in main_dashboard.get("/", token=TOKEN).headers


def test_healthz_is_open(main_dashboard: Dashboard) -> None:
    answer = main_dashboard.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_unknown_api_paths_answer_404_in_json(main_dashboard: Dashboard) -> None:
    answer = main_dashboard.get("/api/nothing/here", token=TOKEN)
    assert answer.status_code == 404
    assert answer.json() == {"detail": "no such API endpoint: /api/nothing/here"}


def test_the_openapi_schema_describes_every_endpoint(main_dashboard: Dashboard) -> None:
    schema = main_dashboard.get("/api/openapi.json", token=TOKEN).json()
    assert set(schema["paths"]) == {
        "/healthz",
        "/api/metrics",
        "/api/status",
        "/api/config",
        "/api/limiter",
        "/api/events",
    }
    metrics_answers = schema["paths"]["/api/metrics"]["get"]["responses"]
    assert {"200", "400", "401", "503"} <= set(metrics_answers)
    assert "422" not in metrics_answers
    assert (
        "text/event-stream" in schema["paths"]["/api/events"]["get"]["responses"]["200"]["content"]
    )
