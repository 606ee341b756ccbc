"""``zai-proxy status``: a running system's health and last minute, as a terminal table.

It asks each part over HTTP, where the environment says they listen (the same variables
the parts read; ``--host`` picks the machine): the proxy's and the collector's health, the
limiter's metrics (rate and ceiling per pool, and which upstream key, by alias, each pool is
and whether it is parked), the clients' flows in each pool (leases held and requests
waiting, from the limiter's admin ``/state``: only with ``LIMITER_ADMIN_TOKEN`` set), and
the dashboard API's last five minutes of
history (of which it sums the last minute). A part that does not answer shows as down;
the exit status is 0 when every part answered and 1 otherwise.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = 2.0
LAST_MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class Part:
    """One part of the system and where it answers."""

    name: str
    url: str
    health: str


def parts(host: str) -> list[Part]:
    """Every part, at the ports the environment sets (the services' defaults otherwise)."""

    def port(variable: str, default: int) -> str:
        return os.environ.get(variable, str(default))

    return [
        Part("proxy", f"http://{host}:{port('PROXY_PORT', 8080)}", "/health"),
        Part("limiter", f"http://{host}:{port('LIMITER_PORT', 8090)}", "/health"),
        Part("collector", f"http://{host}:{port('COLLECTOR_PORT', 8091)}", "/health"),
        Part("dashboard", f"http://{host}:{port('DASHBOARD_PORT', 3000)}", "/healthz"),
    ]


def table(rows: list[list[str]]) -> str:
    """Rows as aligned columns, the first row a header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _health(client: httpx.Client, part: Part) -> tuple[bool, str]:
    try:
        answer = client.get(part.url + part.health)
    except httpx.HTTPError as exc:
        return False, f"down ({type(exc).__name__})"
    status = (
        answer.json().get("status", "?")
        if answer.headers.get("content-type", "").startswith("application/json")
        else str(answer.status_code)
    )
    return answer.status_code == 200, status


def _pools(client: httpx.Client, limiter: Part) -> list[list[str]]:
    try:
        text = client.get(f"{limiter.url}/metrics").text
    except httpx.HTTPError:
        return []
    figures: dict[str, dict[str, float]] = {}
    aliases: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            pool = sample.labels.get("pool")
            if pool and sample.name in _POOL_FIGURES:
                figures.setdefault(pool, {})[sample.name] = sample.value
                if "key" in sample.labels:
                    aliases[pool] = sample.labels["key"]
    rows = [["pool", "key", "rate", "learned limit", "cap", "replicas", "parked"]]
    now = time.time()
    for pool, values in sorted(figures.items()):
        ceiling = values.get("limiter_ceiling")
        rate = values.get("limiter_rate", 0.0)
        cap = values.get("limiter_concurrency_limit", math.inf)
        rows.append(
            [
                pool,
                aliases.get(pool, "-"),
                "no limit" if math.isinf(rate) else f"{rate:.2f}/s",
                "-" if ceiling is None else f"{ceiling:.2f}/s",
                "none" if math.isinf(cap) else f"{cap:.0f}",
                f"{values.get('limiter_replicas', 0):.0f}",
                _parked(values, now),
            ]
        )
    return rows


def _flows(client: httpx.Client, limiter: Part) -> dict[str, list[list[str]]]:
    """Each pool's flows now (client, class, weight, held, waiting), for pools with any."""
    token = os.environ.get("LIMITER_ADMIN_TOKEN")
    if not token:
        return {}
    try:
        answer = client.get(f"{limiter.url}/state", headers={"authorization": f"Bearer {token}"})
        pools = answer.json().get("pools", {}) if answer.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}
    found: dict[str, list[list[str]]] = {}
    for pool, state in sorted(pools.items()):
        flows = state.get("clients") or []
        if flows:
            found[pool] = [["client", "class", "weight", "held", "waiting"]] + [
                [
                    str(flow["client"]),
                    str(flow["class"]),
                    f"{flow['weight']:g}",
                    str(flow["held"]),
                    str(flow["waiting"]),
                ]
                for flow in flows
            ]
    return found


_POOL_FIGURES = frozenset(
    {
        "limiter_rate",
        "limiter_ceiling",
        "limiter_concurrency_limit",
        "limiter_replicas",
        "limiter_key_parked",
        "limiter_key_parked_until_timestamp_seconds",
    }
)


def _parked(values: dict[str, float], now: float) -> str:
    if not values.get("limiter_key_parked"):
        return "no"
    until = values.get("limiter_key_parked_until_timestamp_seconds", math.inf)
    if math.isinf(until):
        return "until lifted"
    return f"for {max(0.0, until - now) / 60:.0f} min"


def _last_minute(client: httpx.Client, dashboard: Part) -> list[list[str]]:
    headers = {}
    token = os.environ.get("DASHBOARD_TOKEN")
    if token:
        headers["authorization"] = f"Bearer {token}"
    try:
        history = client.get(
            f"{dashboard.url}/api/metrics", params={"range": "5m"}, headers=headers
        ).json()
    except (httpx.HTTPError, ValueError):
        return []
    since = time.time() - LAST_MINUTE
    rows = [["variant", "requests", "req/s", "tokens in", "tokens out", "upstream 429", "5xx"]]
    for variant, points in sorted(history.get("series", {}).items()):
        recent = [p for p in points if p["ts"] >= since]
        if not recent:
            continue

        def total(field: str, recent: list[dict] = recent) -> float:
            return sum(p.get(field) or 0.0 for p in recent)

        seconds = sum(p["seconds"] for p in recent) or LAST_MINUTE
        upstream_429 = sum(
            total(f"upstream_429_{kind}_total")
            for kind in ("frequency", "concurrency", "quota", "congestion")
        )
        rows.append(
            [
                variant,
                f"{total('requests_total'):.0f}",
                f"{total('requests_total') / seconds:.2f}",
                f"{total('tokens_in_total'):,.0f}",
                f"{total('tokens_out_total'):,.0f}",
                f"{upstream_429:.0f}",
                f"{total('requests_5xx_total'):.0f}",
            ]
        )
    return rows


def report(host: str = "127.0.0.1") -> tuple[str, bool]:
    """The status report and whether every part answered."""
    found = parts(host)
    sections = []
    with httpx.Client(timeout=TIMEOUT) as client:
        health = [["part", "url", "health"]]
        all_up = True
        for part in found:
            up, status = _health(client, part)
            all_up &= up
            health.append([part.name, part.url, status])
        sections.append(table(health))
        pools = _pools(client, found[1])
        if len(pools) > 1:
            sections.append("limiter\n" + table(pools))
        for pool, flows in _flows(client, found[1]).items():
            sections.append(f"clients of pool {pool}\n" + table(flows))
        minute = _last_minute(client, found[3])
        if len(minute) > 1:
            sections.append("last minute\n" + table(minute))
        else:
            sections.append("last minute: no figures (is the collector running?)")
    return "\n\n".join(sections), all_up
