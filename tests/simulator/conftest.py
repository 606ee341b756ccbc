"""One simulator process for the whole session, and a client bound to it."""

from collections.abc import Iterator

import httpx
import pytest

from zai_proxy.simulator.process import SimulatorProcess, start_simulator


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorProcess]:
    """A simulator without hidden limits, started as a real process on a free port."""
    with start_simulator() as sim:
        yield sim


@pytest.fixture(scope="session")
def client(simulator: SimulatorProcess) -> Iterator[httpx.Client]:
    """A synchronous httpx client whose base URL is the session's simulator."""
    with httpx.Client(base_url=simulator.url, timeout=10.0) as http:
        yield http
