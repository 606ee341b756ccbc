"""The SSE live stream as a process: rounds written to the database arrive as events.

Each test first reads up to a heartbeat: by then the dashboard has polled (ten times a
second here) and sent every round written before, so what follows is exactly what the
test writes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.collector.processes import running, wait_for
from tests.dashboard_api.conftest import HEARTBEAT, POLL
from tests.dashboard_api.processes import (
    TOKEN,
    Dashboard,
    EventReader,
    RoundWriter,
    dashboard,
    event_ids,
    ms,
)
from tests.dashboard_api.seed import INTERVAL, round_snapshots
from zai_proxy.collector import migrate
from zai_proxy.collector.snapshot import ModelFigures
from zai_proxy.collector.store import SnapshotStore
from zai_proxy.dashboard_api.events import REPLAY_SECONDS


def events_url(dashboard: Dashboard, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"token": TOKEN, **params}.items())
    return f"{dashboard.url}/api/events?{query}"


def test_a_snapshot_event_arrives_for_each_new_round(
    main_dashboard: Dashboard, rounds: RoundWriter
) -> None:
    with EventReader(events_url(main_dashboard)) as reader:
        assert reader.response.status_code == 200
        assert reader.response.headers["content-type"].startswith("text/event-stream")
        reader.until_heartbeat()
        written = rounds.write(2)
        events = reader.snapshots(2)
    assert event_ids(events) == [ms(ts) for ts in written]
    for event, ts in zip(events, written, strict=True):
        body = event.json()
        assert body["ts"] == ts
        assert set(body["variants"]) == {"production", "canary"}
        point = body["variants"]["canary"]
        assert (point["ts"], point["seconds"], point["variant"]) == (ts, INTERVAL, "canary")
        assert point["requests_total"] >= 0
        assert set(point["latency_buckets"]) == {"count", "buckets"}  # thinned, not raw


def test_heartbeat_comments_keep_a_quiet_stream_alive(main_dashboard: Dashboard) -> None:
    with EventReader(events_url(main_dashboard)) as reader:
        reader.until_heartbeat()
        started = time.monotonic()
        for _ in range(3):
            assert reader.until_heartbeat() == []
        elapsed = time.monotonic() - started
    assert 2 * HEARTBEAT <= elapsed <= 3 * HEARTBEAT + 1.0


def test_the_stream_accepts_the_bearer_header(main_dashboard: Dashboard) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with EventReader(f"{main_dashboard.url}/api/events", headers=headers) as reader:
        assert reader.response.status_code == 200
        reader.until_heartbeat()


def test_a_reconnecting_client_gets_exactly_the_rounds_it_missed(
    main_dashboard: Dashboard, rounds: RoundWriter
) -> None:
    with EventReader(events_url(main_dashboard)) as first:
        first.until_heartbeat()
        rounds.write(1)
        (last,) = first.snapshots(1)
    missed = rounds.write(3)
    resume = {"Last-Event-ID": str(last.id)}
    with EventReader(events_url(main_dashboard), headers=resume) as second:
        replayed = second.until_heartbeat()
        assert event_ids(replayed) == [ms(ts) for ts in missed]
        assert [event.json()["ts"] for event in replayed] == missed
        live = rounds.write(2)
        assert event_ids(second.snapshots(2)) == [ms(ts) for ts in live]


def test_a_resume_races_the_poll_without_gap_or_repeat(
    main_dashboard: Dashboard, rounds: RoundWriter
) -> None:
    # The rounds are written right before the reconnect: each lands in the replay, in the
    # live queue, or in both, and is sent once.
    for _ in range(3):
        with EventReader(events_url(main_dashboard)) as first:
            first.until_heartbeat()
            rounds.write(1)
            (last,) = first.snapshots(1)
        missed = rounds.write(2)
        resume = {"Last-Event-ID": str(last.id)}
        with EventReader(events_url(main_dashboard), headers=resume) as second:
            assert event_ids(second.until_heartbeat()) == [ms(ts) for ts in missed]


def test_the_last_event_id_may_come_in_the_query(
    main_dashboard: Dashboard, rounds: RoundWriter
) -> None:
    before = rounds.write(1)[-1]
    missed = rounds.write(2)
    url = events_url(main_dashboard, last_event_id=str(ms(before)))
    with EventReader(url) as reader:
        assert event_ids(reader.until_heartbeat()) == [ms(ts) for ts in missed]


def test_the_replay_reaches_back_at_most_fifteen_minutes(
    main_dashboard: Dashboard, rounds: RoundWriter
) -> None:
    rounds.catch_up()
    with EventReader(events_url(main_dashboard), headers={"Last-Event-ID": "1000"}) as reader:
        replayed = event_ids(reader.until_heartbeat())
    assert replayed == sorted(set(replayed))
    assert replayed[0] >= ms(time.time() - REPLAY_SECONDS - INTERVAL)
    assert replayed[-1] == ms(rounds.last)
    assert len(replayed) >= REPLAY_SECONDS / INTERVAL - 5


# --- the client bound and slow clients: dashboards of their own --------------------------


@pytest.fixture
def migrated_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'rollups.db'}"
    asyncio.run(migrate.upgrade(url))
    return url


@pytest.fixture
def two_client_dashboard(migrated_url: str) -> Iterator[Dashboard]:
    process = dashboard(
        {
            "DATABASE_URL": migrated_url,
            "DASHBOARD_MAX_SSE_CLIENTS": "2",
            "DASHBOARD_SSE_HEARTBEAT": str(HEARTBEAT),
        }
    )
    with running(process):
        yield process


def test_clients_beyond_the_bound_get_503_until_a_slot_frees(
    two_client_dashboard: Dashboard,
) -> None:
    url = f"{two_client_dashboard.url}/api/events"
    first, second = EventReader(url), EventReader(url)
    try:
        assert first.response.status_code == second.response.status_code == 200
        refused = httpx.get(url, timeout=5)
        assert refused.status_code == 503
        assert "too many live clients" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "5"
        first.close()

        def accepted() -> bool:
            with EventReader(url) as third:
                return third.response.status_code == 200

        wait_for(accepted, timeout=5)
    finally:
        first.close()
        second.close()


@pytest.fixture
def small_backlog_dashboard(migrated_url: str) -> Iterator[Dashboard]:
    process = dashboard(
        {
            "DATABASE_URL": migrated_url,
            "DASHBOARD_SSE_BACKLOG": "2",
            "DASHBOARD_POLL_INTERVAL": str(POLL),
        }
    )
    with running(process):
        yield process


class Collecting(threading.Thread):
    """A client that reads every event as it comes, in the background."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.reader = EventReader(url)
        self.ids: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                event = self.reader.next()
                if event.event == "snapshot":
                    self.ids.append(int(str(event.id)))
        except (EOFError, httpx.HTTPError) as exc:
            self.error = exc


def stalled_client(url: str) -> socket.socket:
    """A client that sends its request and then never reads (a tiny receive buffer)."""
    parsed = httpx.URL(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parsed.host, parsed.port))
    request = f"GET {parsed.raw_path.decode()} HTTP/1.1\r\nHost: {parsed.host}\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def big_round(ts: float) -> list:
    # About 100 KB of JSON per round: the stalled client's buffers fill in seconds.
    snapshots = round_snapshots(ts)
    for snapshot in snapshots:
        snapshot.models = {f"model-{i:04d}": ModelFigures(requests=i) for i in range(400)}
    return snapshots


def test_a_stalled_client_is_dropped_while_others_keep_receiving(
    small_backlog_dashboard: Dashboard, migrated_url: str
) -> None:
    url = f"{small_backlog_dashboard.url}/api/events"
    stalled = stalled_client(url)
    stalled_port = stalled.getsockname()[1]
    normal = Collecting(url)
    normal.start()
    written: list[int] = []

    async def write_until_dropped() -> None:
        store = SnapshotStore.open(migrated_url)
        try:
            ts = float(int(time.time()) // 5 * 5)
            deadline = time.monotonic() + 30
            while "dropped a slow SSE client" not in small_backlog_dashboard.log():
                assert time.monotonic() < deadline, "the stalled client was never dropped"
                ts += INTERVAL
                await store.write(big_round(ts))
                written.append(ms(ts))
                await asyncio.sleep(0.02)
            for _ in range(3):  # the others keep receiving after the drop
                ts += INTERVAL
                await store.write(big_round(ts))
                written.append(ms(ts))
        finally:
            await store.close()

    try:
        asyncio.run(write_until_dropped())
        wait_for(lambda: len(normal.ids) >= len(written), timeout=10)
        assert normal.ids == written
        assert normal.error is None
        # The stalled client's connection was closed: what the buffers held, then EOF.
        stalled.settimeout(10)
        received = 0
        while chunk := stalled.recv(1 << 16):
            received += len(chunk)
        assert received > 100_000
    finally:
        stalled.close()
        normal.reader.close()
    assert orjson.loads(small_backlog_dashboard.get("/healthz").text) == {"status": "ok"}
    log = small_backlog_dashboard.log()
    assert f"dropped a slow SSE client 127.0.0.1:{stalled_port}" in log
    assert "without completing response" not in log  # the drop is reported once, as such
