"""The Prometheus exposition of a service's registry (every process's, merged, when
PROMETHEUS_MULTIPROC_DIR is set)."""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess


def renderer(registry: CollectorRegistry) -> Callable[[], tuple[bytes, str]]:
    """Exposition of this process, or of every process in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)

        def render_all() -> tuple[bytes, str]:
            return generate_latest(merged), CONTENT_TYPE_LATEST

        return render_all

    def render() -> tuple[bytes, str]:
        return generate_latest(registry), CONTENT_TYPE_LATEST

    return render
