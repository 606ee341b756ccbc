"""A seeded database, a real limiter, and the dashboard processes that read them.

One dashboard (``dashboard``) serves most tests of this folder for the whole session: a
token, a fast heartbeat and fast polling, the real limiter, an empty static folder the
tests may build a UI into. Tests that need other settings start their own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.collector.processes import limiter, running
from tests.dashboard_api.processes import ADMIN_TOKEN, TOKEN, Dashboard, RoundWriter, dashboard
from tests.dashboard_api.seed import INTERVAL, SeedSummary, seed_history

HEARTBEAT = 0.5  # seconds: fast enough for a test to see several
POLL = 0.1  # seconds between the dashboard's checks for new rounds


@dataclass
class Seeded:
    """A seeded SQLite database and a writer of further rounds."""

    url: str
    summary: SeedSummary
    rounds: RoundWriter


@pytest.fixture(scope="session")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    """A SQLite database with eight days of history for two variants, up to now."""
    url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'rollups.db'}"
    summary = seed_history(url, time.time())
    return Seeded(url, summary, RoundWriter(url, last=summary.end - INTERVAL))


@pytest.fixture(scope="session")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The main dashboard's web UI folder: empty (not built) until a test builds it."""
    return tmp_path_factory.mktemp("static")


@pytest.fixture(scope="session")
def main_dashboard(seeded: Seeded, static_dir: Path) -> Iterator[Dashboard]:
    """The dashboard most tests read: seeded SQLite, a token, a real limiter beside it."""
    beside = limiter({"LIMITER_ADMIN_TOKEN": ADMIN_TOKEN})
    process = dashboard(
        {
            "DATABASE_URL": seeded.url,
            "DASHBOARD_TOKEN": TOKEN,
            "DASHBOARD_SSE_HEARTBEAT": str(HEARTBEAT),
            "DASHBOARD_POLL_INTERVAL": str(POLL),
            "DASHBOARD_STATIC_DIR": str(static_dir),
            "LIMITER_URL": beside.url,
            "LIMITER_ADMIN_TOKEN": ADMIN_TOKEN,
        }
    )
    with running(beside, process):
        yield process


@pytest.fixture
def rounds(seeded: Seeded) -> RoundWriter:
    """Writes the next collector rounds into the main dashboard's database."""
    return seeded.rounds
