"""The chart lints, renders every value set, and every manifest is valid Kubernetes.

Built-in kinds are validated by kubernetes-validate against the Kubernetes 1.31 schemas in
strict mode (unknown fields fail); prometheus-operator's kinds are not in those schemas,
so their structure is checked here against the fields the operator's CRDs define.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.deploy.chart import (
    CHART,
    KUBE_VERSION,
    OPERATOR_KINDS,
    VALUE_SETS,
    VALUES,
    Manifests,
    helm_run,
    render_text,
    template_args,
)

DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def test_there_are_realistic_value_sets_besides_the_defaults() -> None:
    assert {
        "default",
        "external-redis-postgres",
        "existing-secrets",
        "canary",
        "blue-green",
        "ingress",
        "monitoring",
    } <= set(VALUE_SETS)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_chart_lints_cleanly_with_each_value_set(helm: Path, value_set: str) -> None:
    result = helm_run(
        helm, "lint", str(CHART), "--strict",
        "--kube-version", f"{KUBE_VERSION}.0",
        "--values", str(VALUES / f"{value_set}.yaml"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_manifest_is_valid_kubernetes(
    rendered: dict[str, Manifests], value_set: str, tmp_path: Path
) -> None:
    manifests = rendered[value_set]
    path = tmp_path / f"{value_set}.yaml"
    path.write_text(manifests.text)
    result = subprocess.run(
        [
            sys.executable, "-m", "kubernetes_validate",
            "-k", KUBE_VERSION, "--strict", "--quiet", str(path),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # A kind without a schema is only a warning there: allow the operator's kinds alone,
    # so a misspelt apiVersion cannot slip through as "no schema".
    for line in result.stdout.splitlines():
        assert line.startswith("WARN"), line
        assert any(f"kind {kind} " in line for kind in OPERATOR_KINDS), line
    kinds = {obj["kind"] for obj in manifests.objects}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds


def test_the_default_values_render_the_whole_system(rendered: dict[str, Manifests]) -> None:
    manifests = rendered["default"]
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in manifests.objects}
    assert {
        ("Deployment", "gw-zai-proxy-proxy-production"),
        ("Deployment", "gw-zai-proxy-limiter"),
        ("Deployment", "gw-zai-proxy-collector"),
        ("StatefulSet", "gw-zai-proxy-redis"),
        ("Service", "gw-zai-proxy-proxy"),
        ("Service", "gw-zai-proxy-proxy-headless"),
        ("Service", "gw-zai-proxy-dashboard"),
        ("PersistentVolumeClaim", "gw-zai-proxy-data"),
        ("Secret", "gw-zai-proxy"),
        ("ConfigMap", "gw-zai-proxy-config"),
    } <= names


def test_every_object_carries_the_release_labels(rendered: dict[str, Manifests]) -> None:
    for value_set in VALUE_SETS:
        for obj in rendered[value_set].objects:
            labels = obj["metadata"].get("labels", {})
            assert labels.get("app.kubernetes.io/instance") == "gw", obj["metadata"]["name"]
            assert labels.get("app.kubernetes.io/name") == "zai-proxy"


# prometheus-operator's fields (monitoring.coreos.com/v1) that this chart may use.
SERVICE_MONITOR_SPEC = {"jobLabel", "namespaceSelector", "selector", "endpoints"}
ENDPOINT_FIELDS = {
    "port",
    "path",
    "interval",
    "scrapeTimeout",
    "scheme",
    "honorLabels",
    "authorization",
}
RULE_FIELDS = {"alert", "record", "expr", "for", "labels", "annotations"}


def _string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def test_the_operator_objects_have_the_structure_of_their_crds(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["monitoring"]
    (monitor,) = manifests.of_kind("ServiceMonitor")
    (rule,) = manifests.of_kind("PrometheusRule")
    for obj in (monitor, rule):
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
        assert _string_map(obj["metadata"]["labels"])
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    spec = monitor["spec"]
    assert set(spec) <= SERVICE_MONITOR_SPEC
    assert _string_map(spec["selector"]["matchLabels"])
    assert spec["namespaceSelector"] == {"matchNames": ["llm"]}
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= ENDPOINT_FIELDS
        assert isinstance(endpoint["port"], str)
        assert endpoint["path"].startswith("/")
        assert DURATION.match(endpoint["interval"])
        assert DURATION.match(endpoint["scrapeTimeout"])
        authorization = endpoint["authorization"]
        assert set(authorization) == {"type", "credentials"}
        assert set(authorization["credentials"]) == {"name", "key"}

    assert set(rule["spec"]) == {"groups"}
    alerts = []
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "rules", "interval"}
        for item in group["rules"]:
            assert set(item) <= RULE_FIELDS
            assert isinstance(item["alert"], str) and re.match(r"^[A-Za-z_]\w*$", item["alert"])
            promql_parser.parse(item["expr"])  # raises on a syntax error
            assert DURATION.match(item["for"])
            assert _string_map(item["labels"]) and item["labels"]["severity"]
            assert _string_map(item["annotations"]) and item["annotations"]["summary"]
            alerts.append(item["alert"])
    assert len(alerts) == len(set(alerts))


def test_the_alerts_cover_what_an_operator_must_hear_about(
    rendered: dict[str, Manifests],
) -> None:
    (rule,) = rendered["monitoring"].of_kind("PrometheusRule")
    alerts = {item["alert"]: item for group in rule["spec"]["groups"] for item in group["rules"]}
    expected = {
        "ZaiProxyUpstream429RatioHigh": "> 0.05",
        "ZaiProxyLatencyP95High": "> 60",
        "ZaiProxyErrorRatioHigh": "> 0.02",
        "ZaiProxyLimiterDegraded": "proxy_limiter_degraded",
        "ZaiProxyCollectorStale": "collector_last_success_timestamp_seconds",
        "ZaiProxyQuotaNearlyExhausted": "limiter_quota_used_ratio",
    }
    for alert, fragment in expected.items():
        assert fragment in alerts[alert]["expr"], alert
    assert "histogram_quantile(0.95" in alerts["ZaiProxyLatencyP95High"]["expr"]
    # Every alert is scoped to the release's namespace.
    for item in alerts.values():
        assert 'namespace="llm"' in item["expr"]


BAD_VALUES = [
    ("variants.canary.replicas=-1", "variants.canary.replicas: Must be greater than or equal"),
    ("variants.Canary.replicas=1", 'Property name of "Canary" does not match'),
    ("config.ZAI_API_KEY=sk-1", 'Property name of "ZAI_API_KEY" does not match'),
    ("config.MY_SERVICE_TOKEN=x", 'Property name of "MY_SERVICE_TOKEN" does not match'),
    ("proxy.env.REDIS_URL=redis://x", 'Property name of "REDIS_URL" does not match'),
    ("proxy.processes=0", "proxy.processes: Must be greater than or equal to 1"),
    ("collector.scrapeInterval=7", "collector.scrapeInterval must be one of"),
    ("prxy.replicas=2", "Additional property prxy is not allowed"),
    ("database.url=mysql://u:p@db/x", "database.url: Does not match pattern"),
    (
        "redis.enabled=false",
        "redis: set redis.url or redis.existingSecret when redis.enabled is false",
    ),
    ("proxy.activeVariant=green", 'proxy.activeVariant: "green" is not one of the variants'),
    ("variants.production.enabled=false", "at least one variant must be enabled"),
    ("telemetry.protocol=http/json", "telemetry.protocol"),
    ("telemetry.endpoint=otel:4318", "telemetry.endpoint: Does not match pattern"),
]


@pytest.mark.parametrize(("setting", "message"), BAD_VALUES)
def test_bad_values_fail_at_install_time_with_a_clear_message(
    helm: Path, setting: str, message: str
) -> None:
    result = helm_run(helm, *template_args("default", setting))
    assert result.returncode != 0, f"{setting} was accepted"
    assert message in result.stderr, result.stderr


def test_the_values_file_and_its_schema_agree_on_every_key() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        shared = "$ref" in node  # a shared definition may offer more than values.yaml sets
        if shared:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        if not isinstance(value, dict) or "properties" not in node:
            return
        for key, item in value.items():
            assert key in node["properties"], f"{path}{key} is not in values.schema.json"
            walk(item, node["properties"][key], f"{path}{key}.")
        for key in node["properties"]:
            if not shared and node.get("additionalProperties") is False and key != "global":
                assert key in value, f"{path}{key} is in the schema but not in values.yaml"

    walk(values, schema, "")


def render_notes(helm: Path, tmp_path: Path, value_set: str, *sets: str) -> str:
    """NOTES.txt as `helm install` would print it (helm template leaves it out)."""
    chart = tmp_path / "chart"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        notes = chart / "templates" / "NOTES.txt"
        (chart / "files").mkdir()
        notes.rename(chart / "files" / "notes.tpl")
        (chart / "templates" / "notes.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
            'data:\n  notes: {{ tpl (.Files.Get "files/notes.tpl") . | quote }}\n'
        )
    args = template_args(value_set, *sets)
    args[2] = str(chart)
    result = helm_run(helm, *args, "--show-only", "templates/notes.yaml")
    assert result.returncode == 0, result.stderr
    return str(yaml.safe_load(result.stdout)["data"]["notes"])


def test_the_notes_say_how_to_reach_the_proxy_and_the_dashboard(helm: Path, tmp_path: Path) -> None:
    notes = render_notes(helm, tmp_path, "default")
    assert "http://gw-zai-proxy-proxy.llm.svc:8080" in notes
    assert "port-forward svc/gw-zai-proxy-proxy 8080:8080" in notes
    assert "port-forward svc/gw-zai-proxy-dashboard 3000:3000" in notes
    assert "get secret gw-zai-proxy -o jsonpath='{.data.DASHBOARD_TOKEN}'" in notes
    assert "WARNING: no upstream key" in notes
    keyed = render_notes(helm, tmp_path, "external-redis-postgres")
    assert "WARNING" not in keyed
    assert "external database" in keyed and "external Redis" in keyed
    ingress = render_notes(helm, tmp_path, "ingress")
    assert "https://llm.example.com" in ingress and "https://dashboard.llm.example.com" in ingress
    assert "without client keys" not in ingress
    open_ingress = render_notes(helm, tmp_path, "ingress", "proxy.clientKeysFile.existingSecret=")
    assert "exposed through an Ingress without client keys" in open_ingress
    blue_green = render_notes(helm, tmp_path, "blue-green")
    assert 'every request to variant "green"' in blue_green


def test_generated_tokens_are_random_and_given_ones_are_kept(helm: Path) -> None:
    first, second = (
        Manifests.parse(render_text(helm, "default")).get("Secret", "gw-zai-proxy")
        for _ in range(2)
    )
    for key in ("LIMITER_ADMIN_TOKEN", "DASHBOARD_TOKEN", "METRICS_TOKEN", "REDIS_PASSWORD"):
        assert first["data"][key] != second["data"][key]
        assert len(base64.b64decode(first["data"][key])) == 40
    given = Manifests.parse(render_text(helm, "external-redis-postgres")).get(
        "Secret", "gw-zai-proxy"
    )
    assert base64.b64decode(given["data"]["LIMITER_ADMIN_TOKEN"]) == (
        b"test-limiter-admin-token-abcdef"
    )
