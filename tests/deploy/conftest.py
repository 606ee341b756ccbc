"""helm for the chart tests: fetched once per session; CI fails without it, elsewhere the
chart tests skip and say why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.deploy.chart import HelmUnavailable, Manifests, helm_binary, render_text


@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned helm binary (deploy/helm/fetch-helm.sh)."""
    try:
        return helm_binary()
    except HelmUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(
                f"CI must lint and render the chart, but helm is missing: {exc}", pytrace=False
            )
        pytest.skip(f"helm could not be obtained, the chart is not rendered: {exc}")


@pytest.fixture(scope="session")
def rendered(helm: Path) -> dict[str, Manifests]:
    """Each value set's manifests, rendered once per session on first use."""
    return _RenderCache(helm)


class _RenderCache(dict[str, Manifests]):
    def __init__(self, helm: Path) -> None:
        super().__init__()
        self.helm = helm

    def __missing__(self, value_set: str) -> Manifests:
        manifests = Manifests.parse(render_text(self.helm, value_set))
        self[value_set] = manifests
        return manifests
