"""The rendered manifests keep the contracts the services rely on.

Each test reads `helm template` output of the value sets under tests/deploy/values/ and
checks one promise: probes on the right endpoints, a grace period that outlasts the
drain, secrets only in Secrets, variants labelled and configured, autoscalers aimed at
their Deployments, the collector finding every proxy, pods that need no root and no
writable root filesystem, and an environment that the services' own settings accept.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import (
    FULLNAME,
    GRAFANA_JSON,
    VALUE_SETS,
    VALUES,
    Manifests,
    container,
    containers,
    env_of,
    render_text,
    selects,
)
from zai_proxy.collector.settings import CollectorSettings, DatabaseSettings
from zai_proxy.collector.targets import parse_targets
from zai_proxy.dashboard_api.settings import DashboardSettings
from zai_proxy.limiter.settings import LimiterSettings
from zai_proxy.limiter.store import Budgets
from zai_proxy.proxy.auth import ClientKeys, parse_inline
from zai_proxy.proxy.clients import ClientPolicy
from zai_proxy.proxy.settings import ProxySettings
from zai_proxy.shared import telemetry

COMPONENT = "app.kubernetes.io/component"
VARIANT = "zai-proxy/variant"
SECRET_VARIABLES = (
    "ZAI_API_KEY",
    "LIMITER_ADMIN_TOKEN",
    "DASHBOARD_TOKEN",
    "METRICS_TOKEN",
    "PROXY_API_KEYS",
    "ZAI_API_KEYS",
    "REDIS_URL",
)
IMAGE_UID = 10001  # the Dockerfile's user


def component_of(workload: dict[str, Any]) -> str:
    return str(workload["spec"]["template"]["metadata"]["labels"][COMPONENT])


def workload(manifests: Manifests, component: str) -> dict[str, Any]:
    (found,) = [w for w in manifests.workloads() if component_of(w) == component]
    return found


def values_of(value_set: str) -> dict[str, Any]:
    return yaml.safe_load((VALUES / f"{value_set}.yaml").read_text()) or {}


# --- probes and draining -------------------------------------------------------------


def http_probe(item: dict[str, Any], probe: str) -> tuple[str, str]:
    get = item[probe]["httpGet"]
    return get["path"], get["port"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_service_is_probed_on_its_own_health_endpoints(
    rendered: dict[str, Manifests], value_set: str
) -> None:
    expected = {
        # container: (readiness, liveness)
        "proxy": ("/ready", "/health"),
        "limiter": ("/ready", "/health"),
        "collector": ("/ready", "/health"),
        "dashboard": ("/healthz", "/healthz"),
    }
    seen = set()
    for _, template in rendered[value_set].pod_templates():
        for item in containers(template, init=False):
            assert "readinessProbe" in item and "livenessProbe" in item, item["name"]
            if item["name"] not in expected:
                continue
            seen.add(item["name"])
            ports = {port["name"] for port in item["ports"]}
            ready, live = expected[item["name"]]
            assert http_probe(item, "readinessProbe")[0] == ready
            assert http_probe(item, "livenessProbe")[0] == live
            assert http_probe(item, "readinessProbe")[1] in ports
            assert http_probe(item, "livenessProbe")[1] in ports
    assert seen == set(expected)


def drain_seconds(proxy: dict[str, Any]) -> float:
    """preStop sleep + SHUTDOWN_DELAY + SHUTDOWN_GRACE of a proxy container."""
    command = proxy["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    env = env_of(proxy)
    return (
        float(command[1])
        + float(env["SHUTDOWN_DELAY"]["value"])
        + float(env["SHUTDOWN_GRACE"]["value"])
    )


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_grace_period_outlasts_the_whole_drain(
    rendered: dict[str, Manifests], value_set: str
) -> None:
    for deployment in rendered[value_set].proxy_deployments():
        proxy = container(deployment, "proxy")
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > drain_seconds(proxy)
        # Not ready at once on SIGTERM, while still serving: endpoints update first.
        assert float(env_of(proxy)["SHUTDOWN_DELAY"]["value"]) > 0
        # New pods come up before old ones start their long drain.
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_a_longer_stream_grace_lengthens_the_grace_period(helm: Path) -> None:
    manifests = Manifests.parse(
        render_text(
            helm, "default", "proxy.drain.shutdownGraceSeconds=900", "proxy.drain.preStopSeconds=10"
        )
    )
    (deployment,) = manifests.proxy_deployments()
    proxy = container(deployment, "proxy")
    assert env_of(proxy)["SHUTDOWN_GRACE"]["value"] == "900"
    assert drain_seconds(proxy) == 10 + 5 + 900
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 915


# --- security ------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_container_runs_as_non_root_on_a_read_only_root(
    rendered: dict[str, Manifests], value_set: str
) -> None:
    for owner, template in rendered[value_set].pod_templates():
        pod = template["spec"].get("securityContext", {})
        assert template["spec"]["automountServiceAccountToken"] is False
        volumes = {volume["name"]: volume for volume in template["spec"].get("volumes", [])}
        for item in containers(template):
            where = f"{owner['metadata']['name']}/{item['name']}"
            security = {**pod, **item.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser", 0) != 0, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            # Whatever must be written goes to a volume: /tmp everywhere, /data where used.
            mounts = {mount["mountPath"]: mount["name"] for mount in item["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], where
            if item["image"].startswith("zai-proxy:"):
                assert security["runAsUser"] == IMAGE_UID, where


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_secret_values_live_only_in_secrets(rendered: dict[str, Manifests], value_set: str) -> None:
    manifests = rendered[value_set]
    given = values_of(value_set)
    secrets = [
        value
        for value in (
            given.get("secrets", {}).get("apiKey"),
            given.get("secrets", {}).get("limiterAdminToken"),
            given.get("secrets", {}).get("dashboardToken"),
            given.get("redis", {}).get("url"),
            given.get("database", {}).get("url"),
            *(
                entry["key"] if isinstance(entry, dict) else entry
                for entry in given.get("secrets", {}).get("clientKeys", {}).values()
            ),
            *given.get("secrets", {}).get("upstreamKeys", {}).values(),
        )
        if value
    ]
    # Generated ones too: whatever the chart's Secret holds.
    for secret in manifests.of_kind("Secret"):
        secrets += [base64.b64decode(v).decode() for v in secret.get("data", {}).values() if v]
    for obj in manifests.objects:
        if obj["kind"] == "Secret":
            continue
        text = yaml.safe_dump(obj)
        for value in secrets:
            assert value not in text, f"a secret value is in {obj['kind']} {obj['metadata']}"
    for config in manifests.of_kind("ConfigMap"):
        for key in config.get("data", {}):
            assert key not in (*SECRET_VARIABLES, "DATABASE_URL"), key
            assert not any(word in key for word in ("TOKEN", "PASSWORD", "SECRET", "KEY")), key
    # Every secret variable reaches a container through a secretKeyRef, never as a value.
    for _, template in manifests.pod_templates():
        for item in containers(template):
            for name, entry in env_of(item).items():
                if name in SECRET_VARIABLES:
                    assert "secretKeyRef" in entry["valueFrom"], f"{item['name']}: {name}"
                if name == "DATABASE_URL" and "value" in entry:
                    assert entry["value"].startswith("sqlite"), item["name"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_secret_reference_resolves(rendered: dict[str, Manifests], value_set: str) -> None:
    manifests = rendered[value_set]
    given = values_of(value_set)
    chart_keys = {
        secret["metadata"]["name"]: set(secret.get("data", {}))
        for secret in manifests.of_kind("Secret")
    }
    external = {
        given.get("secrets", {}).get("existingSecret"),
        given.get("redis", {}).get("existingSecret"),
        given.get("database", {}).get("existingSecret"),
    } - {None, ""}
    for _, template in manifests.pod_templates():
        for item in containers(template):
            for entry in item.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref is None:
                    continue
                if ref["name"] in external:
                    assert ref["name"] not in chart_keys
                else:
                    assert ref["key"] in chart_keys[ref["name"]], f"{item['name']}: {ref}"
    if value_set == "existing-secrets":
        assert not manifests.of_kind("Secret"), "existing Secrets: the chart creates none"


def test_the_upstream_key_comes_from_the_named_key_of_an_existing_secret(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["existing-secrets"]
    for component in ("proxy", "limiter"):
        item = container(workload(manifests, component), component)
        ref = env_of(item)["ZAI_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "zai-proxy-credentials", "key": "upstream-key"}
        redis = env_of(item)["REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert redis == {"name": "redis-credentials", "key": "url"}
    collector = container(workload(manifests, "collector"), "collector")
    database = env_of(collector)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert database == {"name": "postgres-credentials", "key": "DATABASE_URL"}


# --- variants, services, autoscaling --------------------------------------------------


def image_tag(item: dict[str, Any]) -> str:
    return str(item["image"].rsplit(":", 1)[1])


def test_each_variant_is_its_own_deployment_with_its_variant_everywhere(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["canary"]
    deployments = {d["metadata"]["labels"][VARIANT]: d for d in manifests.proxy_deployments()}
    assert set(deployments) == {"production", "canary"}
    for variant, deployment in deployments.items():
        assert deployment["metadata"]["name"] == f"{FULLNAME}-proxy-{variant}"
        assert deployment["spec"]["selector"]["matchLabels"][VARIANT] == variant
        assert deployment["spec"]["template"]["metadata"]["labels"][VARIANT] == variant
        proxy = container(deployment, "proxy")
        assert env_of(proxy)["DEPLOYMENT_VARIANT"]["value"] == variant
    assert image_tag(container(deployments["production"], "proxy")) == "0.1.0"
    assert image_tag(container(deployments["canary"], "proxy")) == "0.2.0-rc.1"
    # The canary runs a fixed replica count; production is left to its autoscaler.
    assert deployments["canary"]["spec"]["replicas"] == 1
    assert "replicas" not in deployments["production"]["spec"]
    canary_env = env_of(container(deployments["canary"], "proxy"))
    assert canary_env["LOG_LEVEL"]["value"] == "DEBUG"
    assert "LOG_LEVEL" not in env_of(container(deployments["production"], "proxy"))


def pod_labels(manifests: Manifests) -> list[dict[str, str]]:
    return [template["metadata"]["labels"] for _, template in manifests.pod_templates()]


def test_one_service_spreads_over_every_variant_and_each_has_its_own(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["canary"]
    main = manifests.get("Service", f"{FULLNAME}-proxy")
    selected = [
        labels for labels in pod_labels(manifests) if selects(main["spec"]["selector"], labels)
    ]
    assert sorted(labels[VARIANT] for labels in selected) == ["canary", "production"]
    for variant in ("production", "canary"):
        own = manifests.get("Service", f"{FULLNAME}-proxy-{variant}")
        picked = [lb for lb in pod_labels(manifests) if selects(own["spec"]["selector"], lb)]
        assert [labels[VARIANT] for labels in picked] == [variant]


def test_blue_green_sends_the_main_service_to_the_active_variant_only(
    rendered: dict[str, Manifests], helm: Path
) -> None:
    manifests = rendered["blue-green"]
    main = manifests.get("Service", f"{FULLNAME}-proxy")
    picked = [lb for lb in pod_labels(manifests) if selects(main["spec"]["selector"], lb)]
    assert [labels[VARIANT] for labels in picked] == ["green"]
    # The switch is a values change of the selector alone: no pod template changes.
    switched = Manifests.parse(render_text(helm, "blue-green", "proxy.activeVariant=blue"))
    main = switched.get("Service", f"{FULLNAME}-proxy")
    picked = [lb for lb in pod_labels(switched) if selects(main["spec"]["selector"], lb)]
    assert [labels[VARIANT] for labels in picked] == ["blue"]
    for before, after in zip(
        manifests.proxy_deployments(), switched.proxy_deployments(), strict=True
    ):
        assert (
            before["spec"]["template"]["metadata"]["labels"]
            == (after["spec"]["template"]["metadata"]["labels"])
        )
        assert container(before, "proxy") == container(after, "proxy")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_service_selects_pods_that_serve_its_target_port(
    rendered: dict[str, Manifests], value_set: str
) -> None:
    manifests = rendered[value_set]
    templates = [template for _, template in manifests.pod_templates()]
    for service in manifests.of_kind("Service"):
        name = service["metadata"]["name"]
        matching = [
            t for t in templates if selects(service["spec"]["selector"], t["metadata"]["labels"])
        ]
        assert matching, f"Service {name} selects no pod"
        for port in service["spec"]["ports"]:
            for template in matching:
                names = {
                    p["name"]
                    for item in containers(template, init=False)
                    for p in item.get("ports", [])
                }
                assert port["targetPort"] in names, f"{name}: {port['targetPort']}"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_disruption_budgets_and_spread_constraints_select_their_own_pods(
    rendered: dict[str, Manifests], value_set: str
) -> None:
    manifests = rendered[value_set]
    for budget in manifests.of_kind("PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        owners = [
            w for w, t in manifests.pod_templates() if selects(selector, t["metadata"]["labels"])
        ]
        assert len(owners) == 1, budget["metadata"]["name"]
    for owner, template in manifests.pod_templates():
        for constraint in template["spec"].get("topologySpreadConstraints", []):
            selector = constraint["labelSelector"]["matchLabels"]
            assert selects(selector, template["metadata"]["labels"])
            others = [
                w for w, t in manifests.pod_templates()
                if w is not owner and selects(selector, t["metadata"]["labels"])
            ]  # fmt: skip
            assert not others, f"{owner['metadata']['name']} spreads with {others}"
    proxies = manifests.proxy_deployments()
    assert all(manifests.has("PodDisruptionBudget", d["metadata"]["name"]) for d in proxies), (
        "every proxy variant has a disruption budget"
    )


@pytest.mark.parametrize("value_set", ["canary", "monitoring"])
def test_autoscalers_aim_at_their_variants_deployment(
    rendered: dict[str, Manifests], value_set: str
) -> None:
    manifests = rendered[value_set]
    scalers = manifests.of_kind("HorizontalPodAutoscaler")
    assert scalers
    for scaler in scalers:
        target = scaler["spec"]["scaleTargetRef"]
        assert target["apiVersion"] == "apps/v1" and target["kind"] == "Deployment"
        deployment = manifests.get("Deployment", target["name"])
        variant = scaler["metadata"]["labels"][VARIANT]
        assert deployment["metadata"]["labels"][VARIANT] == variant
        # The autoscaler owns the replica count: a helm upgrade must not reset it.
        assert "replicas" not in deployment["spec"]
        assert 1 <= scaler["spec"]["minReplicas"] <= scaler["spec"]["maxReplicas"]
        cpu = [m for m in scaler["spec"]["metrics"] if m["type"] == "Resource"]
        assert cpu[0]["resource"]["name"] == "cpu"
        assert cpu[0]["resource"]["target"]["type"] == "Utilization"
        pods = [m for m in scaler["spec"]["metrics"] if m["type"] == "Pods"]
        if value_set == "monitoring":
            assert pods[0]["pods"]["metric"]["name"] == "proxy_in_flight_requests"
            assert pods[0]["pods"]["target"]["averageValue"] == "40"
        else:
            assert not pods
    scaled = {s["spec"]["scaleTargetRef"]["name"] for s in scalers}
    for deployment in manifests.proxy_deployments():
        if deployment["metadata"]["name"] not in scaled:
            assert deployment["spec"]["replicas"] >= 0


# --- collector, dashboard, database, redis --------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_collector_discovers_every_proxy_through_the_headless_service(
    rendered: dict[str, Manifests], value_set: str
) -> None:
    manifests = rendered[value_set]
    collector = container(workload(manifests, "collector"), "collector")
    env = env_of(collector)
    for variable, component in (
        ("COLLECTOR_TARGETS", "proxy"),
        ("COLLECTOR_LIMITER_TARGETS", "limiter"),
    ):
        (spec,) = parse_targets(env[variable]["value"], "proxy")
        assert spec.dns, f"{variable} must re-resolve a name each round"
        service = manifests.get("Service", spec.host)
        assert service["spec"]["clusterIP"] == "None"
        # Draining pods still have counts to report.
        assert service["spec"]["publishNotReadyAddresses"] is True
        (port,) = service["spec"]["ports"]
        assert port["port"] == spec.port
        templates = [template for _, template in manifests.pod_templates()]
        pods = [
            t for t in templates if selects(service["spec"]["selector"], t["metadata"]["labels"])
        ]
        everyone = [t for t in templates if t["metadata"]["labels"][COMPONENT] == component]
        assert pods == everyone and pods
        for template in pods:
            ports = {
                p["name"]: p["containerPort"]
                for item in containers(template, init=False)
                for p in item.get("ports", [])
            }
            # A DNS target is scraped at the Service's port, on the pod itself.
            assert ports[port["targetPort"]] == spec.port


def test_sqlite_puts_the_collector_and_dashboard_in_one_pod_beside_the_claim(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["default"]
    collector = workload(manifests, "collector")
    spec = collector["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    names = [item["name"] for item in containers(spec["template"])]
    assert names == ["migrate", "collector", "dashboard"]
    (claim,) = [v for v in spec["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert manifests.has("PersistentVolumeClaim", claim["persistentVolumeClaim"]["claimName"])
    for item in containers(spec["template"]):
        assert env_of(item)["DATABASE_URL"]["value"] == "sqlite+aiosqlite:////data/zai-proxy.db"
        mounts = {m["mountPath"]: m["name"] for m in item["volumeMounts"]}
        assert mounts["/data"] == claim["name"]
    assert not manifests.has("Deployment", f"{FULLNAME}-dashboard")
    service = manifests.get("Service", f"{FULLNAME}-dashboard")
    assert selects(service["spec"]["selector"], spec["template"]["metadata"]["labels"])


def test_postgres_gives_the_dashboard_a_deployment_of_its_own(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["external-redis-postgres"]
    assert not manifests.of_kind("PersistentVolumeClaim")
    assert not manifests.of_kind("StatefulSet"), "an external Redis: no chart Redis"
    dashboard = workload(manifests, "dashboard")
    assert dashboard["spec"]["replicas"] == 2
    collector = workload(manifests, "collector")
    assert [c["name"] for c in containers(collector["spec"]["template"])] == [
        "migrate",
        "collector",
    ]
    for item in (container(dashboard, "dashboard"), container(collector, "collector")):
        ref = env_of(item)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": FULLNAME, "key": "DATABASE_URL"}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_migrations_run_before_the_collector_on_its_database(
    rendered: dict[str, Manifests], value_set: str
) -> None:
    collector = workload(rendered[value_set], "collector")
    template = collector["spec"]["template"]
    (migrate,) = template["spec"]["initContainers"]
    assert migrate["args"] == ["migrate"]
    main = container(collector, "collector")
    assert migrate["image"] == main["image"]
    assert env_of(migrate)["DATABASE_URL"] == env_of(main)["DATABASE_URL"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_proxies_and_limiters_always_share_a_redis(
    rendered: dict[str, Manifests], value_set: str
) -> None:
    manifests = rendered[value_set]
    for component in ("proxy", "limiter"):
        for owner, template in manifests.pod_templates():
            if template["metadata"]["labels"][COMPONENT] != component:
                continue
            item = container(owner, component)
            assert "REDIS_URL" in env_of(item), f"{owner['metadata']['name']} has no Redis"
    limiter = workload(manifests, "limiter")
    assert limiter["spec"]["replicas"] == 2
    assert "LIMITER_ADMIN_TOKEN" in env_of(container(limiter, "limiter"))


def test_the_chart_redis_url_names_the_chart_redis_service(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["default"]
    (secret,) = manifests.of_kind("Secret")
    url = base64.b64decode(secret["data"]["REDIS_URL"]).decode()
    password = base64.b64decode(secret["data"]["REDIS_PASSWORD"]).decode()
    assert url == f"redis://:{password}@{FULLNAME}-redis:6379/0" and len(password) >= 32
    assert manifests.get("Service", f"{FULLNAME}-redis")["spec"]["ports"][0]["port"] == 6379


def test_ingresses_route_to_the_dashboard_and_proxy_services(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["ingress"]
    routes = {}
    for ingress in manifests.of_kind("Ingress"):
        assert ingress["spec"]["ingressClassName"] == "nginx"
        assert ingress["spec"]["tls"]
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = manifests.get("Service", backend["name"])
                assert backend["port"]["number"] in [p["port"] for p in service["spec"]["ports"]]
                routes[rule["host"]] = backend["name"]
    assert routes == {
        "dashboard.llm.example.com": f"{FULLNAME}-dashboard",
        "llm.example.com": f"{FULLNAME}-proxy",
    }


def test_prometheus_scrapes_each_pod_once_and_never_the_dashboard(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["monitoring"]
    (monitor,) = manifests.of_kind("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [
        s for s in manifests.of_kind("Service") if selects(selector, s["metadata"]["labels"])
    ]
    assert sorted(s["metadata"]["name"] for s in scraped) == [
        f"{FULLNAME}-collector",
        f"{FULLNAME}-limiter-headless",
        f"{FULLNAME}-proxy-headless",
    ]
    ports = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
    for service in scraped:
        assert ports <= {port["name"] for port in service["spec"]["ports"]}
    # Each pod behind exactly one scraped Service.
    for _, template in manifests.pod_templates():
        behind = [
            s for s in scraped if selects(s["spec"]["selector"], template["metadata"]["labels"])
        ]
        assert len(behind) <= 1


def test_the_grafana_dashboard_ships_in_a_configmap_for_the_sidecar(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["monitoring"]
    config = manifests.get("ConfigMap", f"{FULLNAME}-grafana-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["metadata"]["namespace"] == "monitoring"
    assert json.loads(config["data"]["zai-proxy.json"]) == json.loads(GRAFANA_JSON.read_text())
    assert not rendered["default"].of_kind("ServiceMonitor")
    assert not rendered["default"].has("ConfigMap", f"{FULLNAME}-grafana-dashboard")


# --- the services accept the environment the chart gives them ------------------------

SECRET_STAND_INS = {
    "ZAI_API_KEY": "sk-stand-in",
    "LIMITER_ADMIN_TOKEN": "admin-stand-in",
    "DASHBOARD_TOKEN": "read-stand-in",
    "METRICS_TOKEN": "metrics-stand-in",
    "PROXY_API_KEYS": "alice:sk-alice-stand-in",
    "ZAI_API_KEYS": "plan-b:sk-plan-b-stand-in",
    "REDIS_URL": "redis://:pw@redis:6379/0",
    "DATABASE_URL": "postgresql://zai:pw@postgres:5432/zai",
}
SETTINGS = {
    "proxy": (ProxySettings, LimiterSettings),
    "limiter": (LimiterSettings,),
    "collector": (CollectorSettings,),
    "dashboard": (DashboardSettings,),
    "migrate": (DatabaseSettings,),
}


def effective_env(manifests: Manifests, item: dict[str, Any]) -> dict[str, str]:
    """What a container's process sees: its ConfigMaps, then its env (secrets stood in)."""
    env: dict[str, str] = {}
    for source in item.get("envFrom", []):
        config = manifests.get("ConfigMap", source["configMapRef"]["name"])
        env.update(config["data"])
    for entry in item.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            env[entry["name"]] = SECRET_STAND_INS[entry["name"]]
    return env


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_each_service_accepts_the_environment_the_chart_gives_it(
    rendered: dict[str, Manifests], value_set: str
) -> None:
    manifests = rendered[value_set]
    checked = set()
    for _, template in manifests.pod_templates():
        for item in containers(template):
            if item["name"] not in SETTINGS:
                continue
            env = effective_env(manifests, item)
            values: dict[str, Any] = {name.lower(): value for name, value in env.items()}
            for settings_class in SETTINGS[item["name"]]:
                settings_class(**values)
            checked.add(item["name"])
            assert item["args"] == [item["name"]], "the command picks the service"
    assert checked == set(SETTINGS)


def test_the_proxy_and_limiter_read_the_same_limits(rendered: dict[str, Manifests]) -> None:
    manifests = rendered["external-redis-postgres"]
    proxy = effective_env(manifests, container(manifests.proxy_deployments()[0], "proxy"))
    limiter = effective_env(manifests, container(workload(manifests, "limiter"), "limiter"))
    for name in ("RATE_LIMIT_INITIAL", "RATE_LIMIT_MAX", "QUOTA_PACING_ENABLED"):
        assert proxy[name] == limiter[name]
    values: dict[str, Any] = {name.lower(): value for name, value in limiter.items()}
    limits = LimiterSettings(**values)
    assert limits.rate_limit_max == 40 and limits.quota_pacing_enabled
    assert proxy["PROXY_PROCESSES"] == "4"


def test_the_proxies_collector_and_prometheus_share_one_metrics_token(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["monitoring"]
    refs = [
        env_of(container(owner, name))["METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
        for owner, name in [
            *((d, "proxy") for d in manifests.proxy_deployments()),
            (workload(manifests, "collector"), "collector"),
        ]
    ]
    (monitor,) = manifests.of_kind("ServiceMonitor")
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["authorization"]["type"] == "Bearer"
        refs.append(endpoint["authorization"]["credentials"])
    assert all(ref == {"name": FULLNAME, "key": "METRICS_TOKEN"} for ref in refs), refs
    (secret,) = manifests.of_kind("Secret")
    assert len(base64.b64decode(secret["data"]["METRICS_TOKEN"])) >= 32


def test_client_keys_reach_only_the_proxies(rendered: dict[str, Manifests]) -> None:
    manifests = rendered["external-redis-postgres"]
    (secret,) = manifests.of_kind("Secret")
    keys = base64.b64decode(secret["data"]["PROXY_API_KEYS"]).decode()
    assert keys == (
        "batch-jobs:sk-client-batch-jobs-abcdef weight=0.5 class=batch rpm=120"
        " tokens_per_day=5000000,"
        "ci-bot:sk-client-ci-bot-abcdef,team-a:sk-client-team-a-abcdef"
    )
    # What the proxy makes of it: a client entry's map became its policy.
    policies = ClientKeys(parse_inline(keys)).policies
    assert policies["batch-jobs"] == ClientPolicy(
        "batch-jobs", 0.5, 1, Budgets(rpm=120, tokens_per_day=5_000_000)
    )
    assert policies["team-a"] == ClientPolicy("team-a")
    for owner, template in manifests.pod_templates():
        for item in containers(template):
            has_keys = "PROXY_API_KEYS" in env_of(item)
            assert has_keys == (item["name"] == "proxy"), owner["metadata"]["name"]
    proxy = container(manifests.proxy_deployments()[0], "proxy")
    ref = env_of(proxy)["PROXY_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": FULLNAME, "key": "PROXY_API_KEYS", "optional": False}
    # Without client keys the proxies take anyone, and say nothing of keys.
    assert "PROXY_API_KEYS" not in env_of(
        container(rendered["default"].proxy_deployments()[0], "proxy")
    )


def test_upstream_keys_reach_the_proxies_and_the_limiter_only(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["external-redis-postgres"]
    (secret,) = manifests.of_kind("Secret")
    keys = base64.b64decode(secret["data"]["ZAI_API_KEYS"]).decode()
    assert keys == "plan-b:sk-test-upstream-plan-b-abcdef,plan-c:sk-test-upstream-plan-c-abcdef"
    for owner, template in manifests.pod_templates():
        for item in containers(template):
            has_keys = "ZAI_API_KEYS" in env_of(item)
            assert has_keys == (item["name"] in ("proxy", "limiter")), owner["metadata"]["name"]
    for item in (
        container(manifests.proxy_deployments()[0], "proxy"),
        container(workload(manifests, "limiter"), "limiter"),
    ):
        ref = env_of(item)["ZAI_API_KEYS"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": FULLNAME, "key": "ZAI_API_KEYS", "optional": False}
    # With one key the chart says nothing of more.
    assert "ZAI_API_KEYS" not in env_of(
        container(rendered["default"].proxy_deployments()[0], "proxy")
    )


def test_an_upstream_keys_file_is_mounted_read_only_into_the_proxies_and_the_limiter(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["ingress"]
    (deployment,) = manifests.proxy_deployments()
    for owner, name in ((deployment, "proxy"), (workload(manifests, "limiter"), "limiter")):
        item = container(owner, name)
        path = env_of(item)["ZAI_API_KEYS_FILE"]["value"]
        (mount,) = [m for m in item["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        assert mount["readOnly"] is True
        volumes = {v["name"]: v for v in owner["spec"]["template"]["spec"]["volumes"]}
        assert volumes[mount["name"]]["secret"]["secretName"] == "zai-proxy-upstream-keys"
        assert path == "/etc/zai-proxy/upstream-keys/plans"


def test_a_client_keys_file_is_mounted_read_only_from_its_secret(
    rendered: dict[str, Manifests],
) -> None:
    (deployment,) = rendered["ingress"].proxy_deployments()
    proxy = container(deployment, "proxy")
    path = env_of(proxy)["PROXY_API_KEYS_FILE"]["value"]
    (mount,) = [m for m in proxy["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["secret"]["secretName"] == "zai-proxy-client-keys"
    assert path == "/etc/zai-proxy/keys/keys"


def test_telemetry_values_give_every_service_the_standard_otel_variables(
    rendered: dict[str, Manifests],
) -> None:
    manifests = rendered["monitoring"]
    for owner, name in [
        *((d, "proxy") for d in manifests.proxy_deployments()),
        (workload(manifests, "limiter"), "limiter"),
    ]:
        env = effective_env(manifests, container(owner, name))
        assert telemetry.enabled(env)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4318"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.2"
        assert "OTEL_METRICS_EXPORTER" not in env
    # Off by default: no OTEL_* variable at all.
    for config in rendered["default"].of_kind("ConfigMap"):
        assert not [name for name in config.get("data") or {} if name.startswith("OTEL_")]


def test_telemetry_metrics_can_be_turned_off_leaving_traces(helm: Path) -> None:
    text = render_text(
        helm, "default", "telemetry.endpoint=http://c:4317", "telemetry.protocol=grpc",
        "telemetry.metrics=false",
    )  # fmt: skip
    config = next(
        doc
        for doc in yaml.safe_load_all(text)
        if doc and doc["kind"] == "ConfigMap" and "OTEL_EXPORTER_OTLP_ENDPOINT" in doc["data"]
    )
    assert config["data"]["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert config["data"]["OTEL_METRICS_EXPORTER"] == "none"
