"""The Grafana dashboard of zai-proxy, written as data: the same panels as the built-in UI.

``python deploy/grafana/dashboard.py`` writes the JSON to ``deploy/grafana/zai-proxy.json``
(for manual import) and to the chart (``deploy/helm/zai-proxy/dashboards/``, which the
chart ships in a ConfigMap for Grafana's sidecar); ``--check`` fails when either is stale.
tests/deploy/test_monitoring.py checks that every query uses only metric names the
services export.

Latency figures keep the collector's three populations apart (ADR 0017): request duration
and its percentiles are of the answers the upstream served (``origin="upstream"``, and
series without ``origin``, from proxies older than ADR 0017, as the collector counts
them); the proxy's own answers are counted in ``proxy_refusals_total`` and their wait is
the duration with ``origin="proxy"``; the time to first byte exists for upstream answers
only.

Grafana-side differences from the built-in UI: costs are left out (the prices live in the
collector, not in Prometheus), and percentiles come from Prometheus' histogram_quantile
over the dashboard's interval rather than the collector's merged rollups.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUTS = (
    HERE / "zai-proxy.json",
    HERE.parent / "helm" / "zai-proxy" / "dashboards" / "zai-proxy.json",
)

UID = "zai-proxy"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every proxy series of the chosen namespace and variants.
P = 'namespace=~"$namespace", variant=~"$variant"'
# Limiter and collector series carry no variant.
N = 'namespace=~"$namespace"'
RATE = "$__rate_interval"
# Request durations of upstream answers: an empty origin matches series without the label
# (a variant still on a proxy image from before ADR 0017), as the collector reads them.
UPSTREAM = 'origin=~"upstream|"'
# The proxy's own answers (refusals): their duration is how long the client waited for one.
REFUSED = 'origin="proxy"'

Panel = dict[str, Any]


def summed(
    metric: str, match: str = "", by: str = "variant", window: str = RATE, fn: str = "rate"
) -> str:
    """sum by (labels) of a counter's rate (or increase) over the chosen proxies."""
    matchers = f"{P}, {match}" if match else P
    return f"sum by ({by}) ({fn}({metric}{{{matchers}}}[{window}]))"


def target(expr: str, legend: str, ref: str, **extra: Any) -> dict[str, Any]:
    """One PromQL query of a panel."""
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "range": not extra.get("instant", False),
        **extra,
    }


def timeseries(
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    unit: str,
    *,
    stack: bool = False,
    bars: bool = False,
    max_value: float | None = None,
) -> Panel:
    """A time series panel; queries are (expr, legend) pairs."""
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if max_value is not None:
        defaults["max"] = max_value
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)
        ],
    }


def stat(title: str, description: str, expr: str, legend: str, unit: str) -> Panel:
    """A headline figure per variant (its latest value)."""
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit, "decimals": 2}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "none",
            "graphMode": "area",
            "textMode": "value_and_name",
            "orientation": "horizontal",
        },
        "targets": [target(expr, legend, "A")],
    }


def gauge(title: str, description: str, expr: str, legend: str) -> Panel:
    """A 0..1 ratio as a gauge (quota windows)."""
    return {
        "type": "gauge",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "unit": "percentunit",
                "min": 0,
                "max": 1,
                "thresholds": {
                    "mode": "absolute",
                    "steps": [
                        {"color": "green", "value": None},
                        {"color": "orange", "value": 0.75},
                        {"color": "red", "value": 0.9},
                    ],
                },
            },
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [target(expr, legend, "A")],
    }


def comparison_table() -> Panel:
    """The variants side by side over the dashboard's time range (the UI's Compare)."""
    window = "$__range"
    columns = [
        ("Requests/s", f"sum by (variant) (rate(proxy_requests_total{{{P}}}[{window}]))", "reqps"),
        (
            "p95 latency",
            "histogram_quantile(0.95, sum by (variant, le) "
            f"(rate(proxy_request_duration_seconds_bucket{{{P}, {UPSTREAM}}}[{window}])))",
            "s",
        ),
        (
            "p95 first byte (upstream answers)",
            "histogram_quantile(0.95, sum by (variant, le) "
            f"(rate(proxy_time_to_first_byte_seconds_bucket{{{P}}}[{window}])))",
            "s",
        ),
        (
            "5xx ratio",
            f'sum by (variant) (rate(proxy_requests_total{{{P}, status=~"5.."}}[{window}])) '
            f"/ sum by (variant) (rate(proxy_requests_total{{{P}}}[{window}]))",
            "percentunit",
        ),
        (
            "Upstream 429s/s",
            summed("proxy_upstream_errors_total", 'type=~"rate_.*"', window=window),
            "reqps",
        ),
        (
            "Tokens/s",
            f"sum by (variant) (rate(proxy_token_input_total{{{P}}}[{window}])) "
            f"+ sum by (variant) (rate(proxy_token_output_total{{{P}}}[{window}]))",
            "short",
        ),
        ("Replicas", f"count by (variant) (proxy_build_info{{{P}}})", "short"),
    ]
    targets = [
        target(expr, "", chr(ord("A") + i), instant=True, format="table")
        for i, (_, expr, _) in enumerate(columns)
    ]
    overrides = [
        {
            "matcher": {"id": "byName", "options": f"Value #{chr(ord('A') + i)}"},
            "properties": [
                {"id": "displayName", "value": name},
                {"id": "unit", "value": unit},
                {"id": "decimals", "value": 3},
            ],
        }
        for i, (name, _, unit) in enumerate(columns)
    ]
    return {
        "type": "table",
        "title": "Variant comparison (over the time range)",
        "description": (
            "Each variant's figures over the dashboard's whole time range, as the built-in "
            "UI's Compare view shows them: read it before moving traffic to a canary or "
            "switching blue/green."
        ),
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {}, "overrides": overrides},
        "options": {"showHeader": True, "sortBy": [{"displayName": "variant", "desc": False}]},
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}}},
        ],
        "targets": targets,
    }


def quantiles(
    metric: str, qs: tuple[float, ...], match: str = "", legend: str = ""
) -> list[tuple[str, str]]:
    """histogram_quantile queries per variant for each quantile."""
    matchers = f"{P}, {match}" if match else P
    return [
        (
            "histogram_quantile("
            f"{q}, sum by (variant, le) (rate({metric}_bucket{{{matchers}}}[{RATE}])))",
            f"{{{{variant}}}} {legend}p{round(q * 100)}",
        )
        for q in qs
    ]


def rows() -> list[tuple[str, list[tuple[Panel, int]]]]:
    """Rows of (panel, width) pairs, top to bottom, as the built-in UI orders them."""
    overview = [
        (
            stat(
                "Requests/s",
                "Requests answered per second, by variant.",
                f"sum by (variant) (rate(proxy_requests_total{{{P}}}[{RATE}]))",
                "{{variant}}",
                "reqps",
            ),
            4,
        ),
        (
            stat(
                "p95 latency",
                "p95 of the whole request time of the answers the upstream served, streams "
                "included; the proxy's own refusals are apart (Errors and retries).",
                "histogram_quantile(0.95, sum by (variant, le) "
                f"(rate(proxy_request_duration_seconds_bucket{{{P}, {UPSTREAM}}}[{RATE}])))",
                "{{variant}}",
                "s",
            ),
            4,
        ),
        (
            stat(
                "5xx ratio",
                "Share of requests answered with a 5xx status.",
                f'sum by (variant) (rate(proxy_requests_total{{{P}, status=~"5.."}}[{RATE}])) '
                f"/ sum by (variant) (rate(proxy_requests_total{{{P}}}[{RATE}]))",
                "{{variant}}",
                "percentunit",
            ),
            4,
        ),
        (
            stat(
                "Tokens/s",
                "Input and output tokens per second.",
                f"sum by (variant) (rate(proxy_token_input_total{{{P}}}[{RATE}])) "
                f"+ sum by (variant) (rate(proxy_token_output_total{{{P}}}[{RATE}]))",
                "{{variant}}",
                "short",
            ),
            4,
        ),
        (
            stat(
                "Admitted rate",
                "Requests/s the shared limiter admits now, as the proxies see it.",
                f"max by (variant) (proxy_limiter_rate{{{P}}})",
                "{{variant}}",
                "reqps",
            ),
            4,
        ),
        (
            stat(
                "Replicas",
                "Proxy pods reporting, by variant.",
                f"count by (variant) (proxy_build_info{{{P}}})",
                "{{variant}}",
                "short",
            ),
            4,
        ),
    ]
    requests = [
        (
            timeseries(
                "Request rate by status",
                "Requests per second answered 2xx, 4xx (other than 429), 429 and 5xx. A 429 "
                "may be the upstream's (after the retries) or the proxy's own refusal.",
                [
                    (
                        summed("proxy_requests_total", 'status=~"2.."'),
                        "{{variant}} 2xx",
                    ),
                    (
                        f'sum by (variant) (rate(proxy_requests_total{{{P}, status=~"4..", '
                        f'status!="429"}}[{RATE}]))',
                        "{{variant}} 4xx",
                    ),
                    (
                        summed("proxy_requests_total", 'status="429"'),
                        "{{variant}} 429",
                    ),
                    (
                        summed("proxy_requests_total", 'status=~"5.."'),
                        "{{variant}} 5xx",
                    ),
                ],
                "reqps",
                stack=True,
            ),
            16,
        ),
        (comparison_table(), 8),
    ]
    latency = [
        (
            timeseries(
                "Latency (upstream answers)",
                "p50, p95 and p99 of the whole request, from arrival to the last byte sent, "
                "of the answers the upstream served (its errors included). The proxy's own "
                "answers (its 429s, a full queue, ...) are apart: Errors and retries.",
                quantiles("proxy_request_duration_seconds", (0.5, 0.95, 0.99), UPSTREAM),
                "s",
            ),
            12,
        ),
        (
            timeseries(
                "Time to first byte (upstream answers)",
                "p50 and p95 of the time to the first body byte of the upstream's answers: "
                "for a stream, what the client waits before it sees output. A whole "
                "(non-streamed) answer counts when its body is sent, near its whole time; "
                "the proxy's own answers are not in it.",
                quantiles("proxy_time_to_first_byte_seconds", (0.5, 0.95)),
                "s",
            ),
            12,
        ),
    ]
    token_queries = [
        (f"sum by (variant) (rate({metric}{{{P}}}[{RATE}]))", f"{{{{variant}}}} {label}")
        for metric, label in (
            ("proxy_token_input_total", "input"),
            ("proxy_token_output_total", "output"),
            ("proxy_token_cache_read_total", "cache read"),
            ("proxy_token_cache_write_total", "cache write"),
            ("proxy_token_reasoning_total", "reasoning"),
        )
    ]
    tokens = [
        (
            timeseries(
                "Token throughput",
                "Input (cache reads included), output (reasoning included), cache-read, "
                "cache-write and reasoning tokens per second.",
                token_queries,
                "short",
            ),
            8,
        ),
        (
            timeseries(
                "Tokens by model",
                "Input plus output tokens per second, by model (the cost drivers; prices "
                "are applied by the collector and shown in the built-in UI).",
                [
                    (
                        f"sum by (model) (rate(proxy_token_input_total{{{P}}}[{RATE}])) "
                        f"+ sum by (model) (rate(proxy_token_output_total{{{P}}}[{RATE}]))",
                        "{{model}}",
                    )
                ],
                "short",
                stack=True,
            ),
            8,
        ),
        (
            timeseries(
                "Tokens by client key",
                "Input plus output tokens per second by client key alias (PROXY_API_KEYS; "
                "anonymous without client keys): who spends the quota.",
                [
                    (
                        f"sum by (key) (rate(proxy_token_input_total{{{P}}}[{RATE}])) "
                        f"+ sum by (key) (rate(proxy_token_output_total{{{P}}}[{RATE}]))",
                        "{{key}}",
                    )
                ],
                "short",
                stack=True,
            ),
            8,
        ),
    ]
    concurrency = [
        (
            timeseries(
                "Concurrency and workers",
                "Requests in flight (holding a worker) and queued for one, by variant.",
                [
                    (
                        f"sum by (variant) (proxy_in_flight_requests{{{P}}})",
                        "{{variant}} in flight",
                    ),
                    (f"sum by (variant) (proxy_queued_requests{{{P}}})", "{{variant}} queued"),
                    (f"sum by (variant) (proxy_workers{{{P}}})", "{{variant}} worker slots"),
                ],
                "short",
            ),
            12,
        ),
        (
            timeseries(
                "Worker utilisation and waits",
                "In flight / worker slots, and p95 of the waits for a worker and for the "
                "rate limiter.",
                [
                    (
                        f"sum by (variant) (proxy_in_flight_requests{{{P}}}) "
                        f"/ sum by (variant) (proxy_workers{{{P}}})",
                        "{{variant}} utilisation",
                    ),
                    *(
                        (
                            f"histogram_quantile(0.95, sum by (variant, le) "
                            f"(rate({metric}_bucket{{{P}}}[{RATE}])))",
                            f"{{{{variant}}}} p95 {label}",
                        )
                        for metric, label in (
                            ("proxy_queue_wait_seconds", "queue wait (s)"),
                            ("proxy_rate_limit_wait_seconds", "limiter wait (s)"),
                        )
                    ),
                ],
                "short",
            ),
            12,
        ),
    ]
    limiter = [
        (
            timeseries(
                "Rate limiter",
                "The admitted rate, the learned ceiling (where the upstream started "
                "answering 429) and the hold line below it, with the proxies' request rate "
                "for scale. Gauges agree across limiter replicas: max, not sum.",
                [
                    (f"max by (pool) (limiter_rate{{{N}}})", "{{pool}} admitted"),
                    (f"max by (pool) (limiter_ceiling{{{N}}})", "{{pool}} ceiling"),
                    (f"max by (pool) (limiter_hold_rate{{{N}}})", "{{pool}} hold line"),
                    (f"max by (pool) (limiter_quota_rate_cap{{{N}}})", "{{pool}} quota cap"),
                    (f"sum(rate(proxy_requests_total{{{P}}}[{RATE}]))", "requests/s"),
                ],
                "reqps",
            ),
            12,
        ),
        (
            timeseries(
                "Probes and back-offs",
                "Controller steps that probed above the ceiling or lowered it (counted by "
                "the leader only).",
                [
                    (
                        f"sum by (direction) (increase(limiter_decisions_total{{{N}, "
                        f'direction=~"probe|decrease"}}[{RATE}]))',
                        "{{direction}}",
                    )
                ],
                "short",
                bars=True,
            ),
            6,
        ),
        (
            timeseries(
                "Upstream 429 ratio by class",
                "Share of the last window's upstream attempts refused for request "
                "frequency, concurrency, quota or model congestion (Z.ai 1302-1312).",
                [
                    (f"max by (class) (limiter_window_429_ratio{{{N}}})", "{{class}}"),
                ],
                "percentunit",
                max_value=1,
            ),
            6,
        ),
        (
            gauge(
                "Quota windows used",
                "The provider's five-hour and weekly windows (QUOTA_POLL_ENABLED).",
                f"max by (window) (limiter_quota_used_ratio{{{N}}})",
                "{{window}}",
            ),
            6,
        ),
        (
            stat(
                "Quota resets in",
                "Time until each quota window resets.",
                f"max by (window) (limiter_quota_reset_timestamp_seconds{{{N}}}) - time()",
                "{{window}}",
                "s",
            ),
            6,
        ),
        (
            timeseries(
                "Limiter state",
                "Leader lease holders (should be 1), limiter replicas reaching Redis, proxy "
                "replicas in the pool, and proxies limiting alone (degraded).",
                [
                    (f"sum(limiter_leader{{{N}}})", "leaders"),
                    (f"sum(limiter_store_up{{{N}}})", "limiters reaching Redis"),
                    (f"max by (pool) (limiter_replicas{{{N}}})", "{{pool}} proxy replicas"),
                    (f"sum by (variant) (proxy_limiter_degraded{{{P}}})", "{{variant}} degraded"),
                    (
                        f"max by (pool) (limiter_concurrency_limit{{{N}}})",
                        "{{pool}} concurrency cap",
                    ),
                ],
                "short",
            ),
            12,
        ),
    ]
    errors = [
        (
            timeseries(
                "Errors and retries per minute",
                "5xx answers, the proxy's own 429s (the limiter could not admit in time), "
                "requests the client abandoned (499) and retries.",
                [
                    (
                        summed("proxy_requests_total", 'status=~"5.."', window="1m", fn="increase"),
                        "{{variant}} 5xx",
                    ),
                    (
                        f"sum by (variant) (increase(proxy_rate_limited_total{{{P}}}[1m]))",
                        "{{variant}} proxy 429",
                    ),
                    (
                        summed("proxy_requests_total", 'status="499"', window="1m", fn="increase"),
                        "{{variant}} 499",
                    ),
                    (
                        f"sum by (variant) (increase(proxy_retry_attempts_total{{{P}}}[1m]))",
                        "{{variant}} retries",
                    ),
                ],
                "short",
            ),
            12,
        ),
        (
            timeseries(
                "Upstream errors by type",
                "Failed upstream attempts per second: 429 classes, server errors, network, "
                "timeouts and truncated streams.",
                [
                    (
                        summed("proxy_upstream_errors_total", by="variant, type"),
                        "{{variant}} {{type}}",
                    )
                ],
                "reqps",
                stack=True,
            ),
            12,
        ),
        (
            timeseries(
                "Proxy refusals by reason",
                "Requests per second the proxy answered itself instead of the upstream, by "
                "reason (the X-Proxy-Error code: proxy_rate_limited, proxy_overloaded, "
                "upstream_unavailable, request_too_large, ...).",
                [
                    (
                        summed("proxy_refusals_total", by="variant, reason"),
                        "{{variant}} {{reason}}",
                    )
                ],
                "reqps",
                stack=True,
            ),
            12,
        ),
        (
            timeseries(
                "Refusal wait",
                "p50 and p95 of how long a client waited for the proxy's own answer (the "
                "duration of origin=proxy requests): a 429 when the limiter cannot admit "
                "within its wait budget (often at once), a 503 for a full queue, a 502 or "
                "504 after the retries.",
                quantiles("proxy_request_duration_seconds", (0.5, 0.95), REFUSED, "refusal "),
                "s",
            ),
            12,
        ),
    ]
    collector = [
        (
            stat(
                "Collector: seconds since last round",
                "Since the end of the collector's last round in which a proxy answered.",
                f"time() - max(collector_last_success_timestamp_seconds{{{N}}})",
                "collector",
                "s",
            ),
            6,
        ),
        (
            timeseries(
                "Collector targets",
                "Targets of the last round and those that answered, by kind.",
                [
                    (f"sum by (kind) (collector_targets{{{N}}})", "{{kind}} targets"),
                    (f"sum by (kind) (collector_targets_up{{{N}}})", "{{kind}} up"),
                ],
                "short",
            ),
            9,
        ),
        (
            timeseries(
                "Collector writes",
                "Snapshots written per second and waiting in memory for the database.",
                [
                    (
                        f"sum(rate(collector_snapshots_written_total{{{N}}}[{RATE}]))",
                        "written/s",
                    ),
                    (f"sum(collector_snapshots_buffered{{{N}}})", "buffered"),
                ],
                "short",
            ),
            9,
        ),
    ]
    return [
        ("Overview", overview),
        ("Requests", requests),
        ("Latency", latency),
        ("Tokens", tokens),
        ("Concurrency and workers", concurrency),
        ("Rate limiter", limiter),
        ("Errors and retries", errors),
        ("Collector", collector),
    ]


def layout() -> list[Panel]:
    """Every panel with its id and grid position: rows of 24 columns."""
    panels: list[Panel] = []
    y = 0
    next_id = 1
    for title, row in rows():
        panels.append(
            {
                "type": "row",
                "title": title,
                "id": next_id,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        height = 4 if title == "Overview" else 8
        for panel, width in row:
            if x + width > 24:
                x = 0
                y += height
            position = {"h": height, "w": width, "x": x, "y": y}
            panels.append({**panel, "id": next_id, "gridPos": position})
            next_id += 1
            x += width
        y += height
    return panels


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value query variable with All (matching any value, or none)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    """The whole dashboard document."""
    return {
        "uid": UID,
        "title": "zai-proxy",
        "description": "LLM gateway: requests, latency, tokens, workers, the rate limiter, "
        "errors and the collector, by deployment variant.",
        "tags": ["zai-proxy", "llm"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "refresh": 1,
                    "current": {},
                },
                variable("namespace", "Namespace", "label_values(proxy_build_info, namespace)"),
                variable(
                    "variant",
                    "Variant",
                    'label_values(proxy_build_info{namespace=~"$namespace"}, variant)',
                ),
            ]
        },
        "annotations": {"list": []},
        "links": [],
        "panels": layout(),
    }


def render() -> str:
    """The dashboard as the JSON text written to the files."""
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a file is stale")
    args = parser.parse_args(argv)
    text = render()
    stale = [path for path in OUTPUTS if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path} is stale: run python deploy/grafana/dashboard.py")
        return 1 if stale else 0
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
