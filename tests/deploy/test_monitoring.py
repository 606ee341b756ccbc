"""Grafana's dashboard and the alerts ask only for metrics the services really export.

The names come from a running proxy's and limiter's /metrics (real processes against the
simulated upstream, with one request through the proxy) and from the collector's metric
definitions; every PromQL query of the dashboard and of the PrometheusRule is parsed and
each metric it selects must be among them (a histogram's _bucket, _sum and _count too).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import promql_parser
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.deploy.chart import CHART, GRAFANA_JSON, ROOT, Manifests
from tests.support import start_limiter, start_proxy
from zai_proxy.collector.metrics import CollectorMetrics
from zai_proxy.shared.proxy_metrics import (
    ORIGIN_CLIENT,
    ORIGIN_PROXY,
    ORIGIN_UPSTREAM,
    REFUSALS,
    REQUEST_DURATION,
    TIME_TO_FIRST_BYTE,
)
from zai_proxy.simulator.process import start_simulator

DASHBOARD_SCRIPT = ROOT / "deploy" / "grafana" / "dashboard.py"
CHART_COPY = CHART / "dashboards" / "zai-proxy.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Grafana's variables, replaced by something PromQL parses.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__range": "1h",
    "$__interval": "1m",
    "$namespace": ".*",
    "$variant": ".*",
}
TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)


def exported_names(exposition: str) -> set[str]:
    """Every series name an exposition can hold: declared families and their samples."""
    names = set()
    for name, kind in TYPE_LINE.findall(exposition):
        names.add(name)
        if kind in ("histogram", "summary"):
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture(scope="module")
def exported() -> Iterator[dict[str, set[str]]]:
    """Metric names by service: a live proxy and limiter, and the collector's definitions."""
    registry = CollectorRegistry()
    CollectorMetrics(registry)
    collector = exported_names(generate_latest(registry).decode())
    with (
        start_simulator() as upstream,
        start_proxy(upstream.url) as proxy,
        start_limiter() as limiter,
    ):
        answer = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        yield {
            "proxy": exported_names(httpx.get(f"{proxy.url}/metrics", timeout=10).text),
            "limiter": exported_names(httpx.get(f"{limiter.url}/metrics", timeout=10).text),
            "collector": collector,
        }


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (after Grafana's variables)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next(
                (m.value for m in node.matchers.matchers if m.name == "__name__"), None
            )
            assert name, f"a selector without a metric name in {expr}"
            names.add(name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


Matcher = tuple[promql_parser.MatchOp, str]


def selectors(expr: str, metric: str) -> list[dict[str, Matcher]]:
    """Each selector of ``metric`` in a PromQL expression: label → (operator, value)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    found: list[dict[str, Matcher]] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name == metric:
            found.append({m.name: (m.op, m.value) for m in node.matchers.matchers})
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def matches(matcher: Matcher | None, value: str) -> bool:
    """Whether a label matcher selects a series whose label is ``value`` ("" when absent)."""
    if matcher is None:
        return True
    op, pattern = matcher
    regex = op in (promql_parser.MatchOp.Re, promql_parser.MatchOp.NotRe)
    hit = re.fullmatch(pattern, value) is not None if regex else pattern == value
    return hit != (op in (promql_parser.MatchOp.NotEqual, promql_parser.MatchOp.NotRe))


def dashboard() -> dict[str, Any]:
    return json.loads(GRAFANA_JSON.read_text())


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard: panels, then the variables' label_values()."""
    queries = [
        target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *\w+\)", variable["query"]["query"])
            assert match, variable["query"]
            queries.append(match.group(1))
    return queries


def test_the_dashboard_files_are_the_generators_output() -> None:
    result = subprocess.run(
        [sys.executable, str(DASHBOARD_SCRIPT), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert CHART_COPY.read_text() == GRAFANA_JSON.read_text()


def test_every_dashboard_query_uses_only_exported_metrics(
    exported: dict[str, set[str]],
) -> None:
    known = set().union(*exported.values())
    queries = dashboard_queries()
    assert len(queries) > 40
    used: set[str] = set()
    for query in queries:
        names = metric_names(query)
        assert names, query
        assert names <= known, f"not exported: {sorted(names - known)} in {query}"
        used |= names
    # The dashboard covers every service's own figures.
    assert any(name in exported["proxy"] and name.startswith("proxy_") for name in used)
    assert any(name in exported["limiter"] and name.startswith("limiter_") for name in used)
    assert any(name.startswith("collector_") for name in used)


def test_the_metric_name_check_catches_a_wrong_name(exported: dict[str, set[str]]) -> None:
    known = set().union(*exported.values())
    names = metric_names('sum(rate(proxy_request_total{variant=~"$variant"}[$__rate_interval]))')
    assert names == {"proxy_request_total"} and not names <= known
    assert "proxy_request_duration_seconds_bucket" in known
    assert "proxy_request_duration_seconds_total" not in known


def test_the_dashboard_has_the_built_in_uis_panels_and_a_variant_variable() -> None:
    board = dashboard()
    rows = [panel["title"] for panel in board["panels"] if panel["type"] == "row"]
    assert rows == [
        "Overview",
        "Requests",
        "Latency",
        "Tokens",
        "Concurrency and workers",
        "Rate limiter",
        "Errors and retries",
        "Collector",
    ]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["variant"]["multi"] and variables["variant"]["includeAll"]
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            # Every proxy series follows the variant (and namespace) chosen at the top.
            for selector in re.findall(r"(proxy_\w+)\{([^}]*)\}", target["expr"]):
                assert 'variant=~"$variant"' in selector[1], target["expr"]
                assert 'namespace=~"$namespace"' in selector[1], target["expr"]


def test_every_latency_quantile_reads_only_what_the_upstream_answered() -> None:
    duration = f"{REQUEST_DURATION}_bucket"
    read = 0
    for panel in dashboard()["panels"]:
        refusal_wait = panel["title"] == "Refusal wait"
        for target in panel.get("targets", []):
            for labels in selectors(target["expr"], duration):
                read += 1
                origin = labels.get("origin")
                if refusal_wait:
                    assert origin == (promql_parser.MatchOp.Equal, ORIGIN_PROXY), target["expr"]
                    continue
                # Upstream answers, and series from proxies before the origin label (the
                # collector counts those as upstream); never the proxy's refusals nor the
                # clients that left before an answer.
                assert matches(origin, ORIGIN_UPSTREAM) and matches(origin, ""), target["expr"]
                assert not matches(origin, ORIGIN_PROXY), target["expr"]
                assert not matches(origin, ORIGIN_CLIENT), target["expr"]
    # The headline, the comparison table, three latency lines and two refusal-wait lines.
    assert read == 7


def test_the_origin_check_catches_a_query_that_mixes_refusals_in() -> None:
    mixed = f'rate({REQUEST_DURATION}_bucket{{variant=~"$variant"}}[$__rate_interval])'
    (labels,) = selectors(mixed, f"{REQUEST_DURATION}_bucket")
    assert matches(labels.get("origin"), ORIGIN_PROXY)
    assert not matches((promql_parser.MatchOp.Re, "upstream|"), ORIGIN_PROXY)
    assert matches((promql_parser.MatchOp.NotEqual, ORIGIN_PROXY), ORIGIN_UPSTREAM)
    assert not matches((promql_parser.MatchOp.NotRe, "proxy|client"), ORIGIN_PROXY)


def test_the_time_to_first_byte_is_labelled_as_upstream_answers_only() -> None:
    board = dashboard()
    panels = [
        panel
        for panel in board["panels"]
        if any(TIME_TO_FIRST_BYTE in t["expr"] for t in panel.get("targets", []))
    ]
    assert len(panels) == 2
    for panel in panels:
        if panel["type"] == "table":
            names = [
                prop["value"]
                for override in panel["fieldConfig"]["overrides"]
                for prop in override["properties"]
                if prop["id"] == "displayName"
            ]
            assert "p95 first byte (upstream answers)" in names
        else:
            assert panel["title"] == "Time to first byte (upstream answers)"
            assert "stream" in panel["description"]


def test_refusals_have_their_own_panels_of_exported_metrics(
    exported: dict[str, set[str]],
) -> None:
    panels = {panel["title"]: panel for panel in dashboard()["panels"]}
    refusals = panels["Proxy refusals by reason"]
    (query,) = [t["expr"] for t in refusals["targets"]]
    assert metric_names(query) == {REFUSALS} and REFUSALS in exported["proxy"]
    assert query.startswith("sum by (variant, reason) (rate(")
    assert refusals["fieldConfig"]["defaults"]["unit"] == "reqps"
    wait = panels["Refusal wait"]
    assert [t["legendFormat"] for t in wait["targets"]] == [
        "{{variant}} refusal p50",
        "{{variant}} refusal p95",
    ]
    for target in wait["targets"]:
        assert metric_names(target["expr"]) == {f"{REQUEST_DURATION}_bucket"}
    assert f"{REQUEST_DURATION}_bucket" in exported["proxy"]
    # Both sit in the errors row, beside the upstream's errors.
    rows = [panel for panel in dashboard()["panels"] if panel["type"] == "row"]
    errors = next(row for row in rows if row["title"] == "Errors and retries")
    collector = next(row for row in rows if row["title"] == "Collector")
    for panel in (refusals, wait):
        assert errors["gridPos"]["y"] < panel["gridPos"]["y"] < collector["gridPos"]["y"]


def test_every_alert_uses_only_exported_metrics(
    exported: dict[str, set[str]], rendered: dict[str, Manifests]
) -> None:
    known = set().union(*exported.values())
    (rule,) = rendered["monitoring"].of_kind("PrometheusRule")
    for group in rule["spec"]["groups"]:
        for item in group["rules"]:
            names = metric_names(item["expr"])
            assert names and names <= known, f"{item['alert']}: {sorted(names - known)}"
    # The collector-stale alert reads the collector's own last-success timestamp.
    assert "collector_last_success_timestamp_seconds" in exported["collector"]


def test_the_autoscalers_custom_metric_is_a_proxy_gauge(
    exported: dict[str, set[str]], rendered: dict[str, Manifests]
) -> None:
    for scaler in rendered["monitoring"].of_kind("HorizontalPodAutoscaler"):
        for metric in scaler["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in exported["proxy"]
