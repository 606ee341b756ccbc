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
