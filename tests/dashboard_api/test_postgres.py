"""The dashboard on PostgreSQL: history, status and the live stream, as on SQLite.

Under CI a missing PostgreSQL fails the test; elsewhere it skips (``postgres_url``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

import pytest

from tests.collector.processes import running
from tests.dashboard_api.processes import (
    TOKEN,
    Dashboard,
    EventReader,
    RoundWriter,
    dashboard,
    event_ids,
    ms,
)
from tests.dashboard_api.seed import INTERVAL, seed_history
from tests.databases import PostgresDatabases


@dataclass
class OnPostgres:
    dashboard: Dashboard
    rounds: RoundWriter


@pytest.fixture(scope="module")
def on_postgres(postgres_databases: PostgresDatabases) -> Iterator[OnPostgres]:
    url = postgres_databases.create()
    summary = seed_history(url, time.time(), hours=30)
    process = dashboard(
        {
            "DATABASE_URL": url,
            "DASHBOARD_TOKEN": TOKEN,
            "DASHBOARD_SSE_HEARTBEAT": "0.5",
            "DASHBOARD_POLL_INTERVAL": "0.1",
        }
    )
    with running(process):
        yield OnPostgres(process, RoundWriter(url, last=summary.end - INTERVAL))


@pytest.mark.parametrize(("span", "step"), [("15m", 5), ("6h", 120), ("24h", 300)])
def test_ranges_answer_at_their_resolution_on_postgresql(
    on_postgres: OnPostgres, span: str, step: int
) -> None:
    on_postgres.rounds.catch_up()
    body = on_postgres.dashboard.get("/api/metrics", token=TOKEN, params={"range": span}).json()
    assert body["step"] == step
    for points in body["series"].values():
        times = [point["ts"] for point in points]
        assert all(later - earlier == step for earlier, later in pairwise(times))
        assert len(points) >= (body["end"] - body["start"]) // step - 1


def test_status_and_config_on_postgresql(on_postgres: OnPostgres) -> None:
    newest = on_postgres.rounds.catch_up()[-1]
    status = on_postgres.dashboard.get("/api/status", token=TOKEN).json()
    assert {v: s["latest"]["ts"] for v, s in status["variants"].items()} == {
        "production": newest,
        "canary": newest,
    }
    config = on_postgres.dashboard.get("/api/config", token=TOKEN).json()
    assert config["variants"] == ["canary", "production"]


def test_the_live_stream_and_its_replay_on_postgresql(on_postgres: OnPostgres) -> None:
    url = f"{on_postgres.dashboard.url}/api/events?token={TOKEN}"
    with EventReader(url) as reader:
        reader.until_heartbeat()
        (first,) = on_postgres.rounds.write(1)
        assert event_ids(reader.snapshots(1)) == [ms(first)]
    missed = on_postgres.rounds.write(2)
    with EventReader(url, headers={"Last-Event-ID": str(ms(first))}) as reader:
        assert event_ids(reader.until_heartbeat()) == [ms(ts) for ts in missed]
