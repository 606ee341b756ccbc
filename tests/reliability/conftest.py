"""Real processes for the reliability suite: a simulated upstream shared by its tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from zai_proxy.simulator.process import SimulatorProcess, start_simulator


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorProcess]:
    with start_simulator() as sim:
        yield sim
