"""Real processes for the proxy's tests: one simulated upstream, proxies in front of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import ServiceProcess, start_proxy
from zai_proxy.simulator.process import SimulatorProcess, start_simulator


@pytest.fixture(scope="session")
def upstream() -> Iterator[SimulatorProcess]:
    with start_simulator() as simulator:
        yield simulator


@pytest.fixture(scope="module")
def proxy(upstream: SimulatorProcess) -> Iterator[ServiceProcess]:
    with start_proxy(upstream.url) as service:
        yield service
