"""A dashboard started before anything else: an empty database, no limiter yet, no token."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.collector.processes import Process, running, url_of
from tests.dashboard_api.processes import ADMIN_TOKEN, Dashboard, EventReader, dashboard, ms
from tests.dashboard_api.seed import INTERVAL, write_round
from tests.support import TEST_KEY, free_port
from zai_proxy.collector.rollup import bucket_start


@dataclass
class Fresh:
    """The dashboard, its database and where its limiter will be."""

    dashboard: Dashboard
    database_url: str
    limiter_port: int


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fresh]:
    folder = tmp_path_factory.mktemp("fresh")
    database_url = f"sqlite:///{folder / 'new.db'}"  # does not exist yet
    limiter_port = free_port()
    process = dashboard(
        {
            "DATABASE_URL": database_url,
            "DASHBOARD_STATIC_DIR": str(folder / "static"),
            "DASHBOARD_SSE_HEARTBEAT": "0.5",
            "DASHBOARD_POLL_INTERVAL": "0.1",
            "LIMITER_URL": f"http://127.0.0.1:{limiter_port}",
            "LIMITER_ADMIN_TOKEN": ADMIN_TOKEN,
        }
    )
    with running(process):
        yield Fresh(process, database_url, limiter_port)


def test_it_migrates_an_empty_database_and_answers_empty_figures(fresh: Fresh) -> None:
    assert Path(fresh.database_url.removeprefix("sqlite:///")).is_file()
    status = fresh.dashboard.get("/api/status").json()
    assert status["variants"] == {}
    metrics = fresh.dashboard.get("/api/metrics", params={"range": "7d"}).json()
    assert metrics["series"] == {} and metrics["step"] == 3600
    assert fresh.dashboard.get("/api/config").json()["variants"] == []


def test_without_a_token_everything_is_open(fresh: Fresh) -> None:
    for path in ("/api/status", "/api/openapi.json", "/"):
        assert fresh.dashboard.get(path).status_code == 200, path
    schema = fresh.dashboard.get("/api/openapi.json").json()
    assert "security" not in schema["paths"]["/api/status"]["get"]


def test_the_first_rounds_of_a_new_database_are_streamed(fresh: Fresh) -> None:
    ts = bucket_start(time.time(), INTERVAL) - INTERVAL
    with EventReader(f"{fresh.dashboard.url}/api/events") as reader:
        assert reader.until_heartbeat() == []
        write_round(fresh.database_url, ts)
        (event,) = reader.snapshots(1)
    assert int(str(event.id)) == ms(ts)
    assert set(event.json()["variants"]) == {"production", "canary"}
    status = fresh.dashboard.get("/api/status").json()
    assert set(status["variants"]) == {"production", "canary"}
    assert not any(v["stale"] for v in status["variants"].values())


def test_rounds_older_than_the_replay_window_are_history_not_news(fresh: Fresh) -> None:
    with EventReader(f"{fresh.dashboard.url}/api/events") as reader:
        reader.until_heartbeat()
        write_round(fresh.database_url, bucket_start(time.time(), INTERVAL) - 3600)
        assert reader.until_heartbeat() == []
        assert reader.until_heartbeat() == []


def test_the_limiter_state_follows_the_limiter_coming_and_going(fresh: Fresh) -> None:
    down = fresh.dashboard.get("/api/limiter").json()
    assert down["available"] is False
    assert "unreachable" in down["error"] and str(fresh.limiter_port) in down["error"]
    assert fresh.dashboard.get("/api/config").json()["limiter"] == {"configured": True}

    env = {**os.environ, "ZAI_API_KEY": TEST_KEY, "LIMITER_ADMIN_TOKEN": ADMIN_TOKEN}
    env.pop("REDIS_URL", None)
    command = ("limiter", "--host", "127.0.0.1", "--port", str(fresh.limiter_port))
    limiter = Process(command, env, url_of("127.0.0.1", fresh.limiter_port))
    limiter.start()
    try:
        up = fresh.dashboard.get("/api/limiter").json()
        assert up["available"] is True and up["state"]["pools"]
    finally:
        limiter.stop()
    gone = fresh.dashboard.get("/api/limiter").json()
    assert gone["available"] is False and "error" in gone
