"""The dashboard as a real process, a reader of its SSE stream, and a writer of new rounds."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from tests.collector.processes import Process, url_of
from tests.dashboard_api.seed import INTERVAL, write_rounds
from tests.support import free_port, wait_http
from zai_proxy.collector.rollup import bucket_start

TOKEN = "dashboard-read-token-0123456789"
ADMIN_TOKEN = "limiter-admin-token-0123456789"


class Dashboard(Process):
    """`zai-proxy dashboard` on a free loopback port."""

    def wait(self, timeout: float = 30.0) -> None:
        """Wait until it serves /healthz."""
        wait_http(f"{self.url}/healthz", timeout, process=self.process)

    def get(self, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        """A GET with the token as a Bearer header (none when ``token`` is empty)."""
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=10, **kwargs)


def dashboard(env: Mapping[str, str]) -> Dashboard:
    """A dashboard configured by ``env`` (DATABASE_URL at least), not started yet."""
    port = free_port()
    full_env = {**os.environ, "LOG_LEVEL": "INFO", "LIMITER_URL": "", **env}
    for name in ("DASHBOARD_TOKEN", "LIMITER_ADMIN_TOKEN"):
        if name not in env:
            full_env.pop(name, None)
    command = ("dashboard", "--host", "127.0.0.1", "--port", str(port))
    return Dashboard(command, full_env, url_of("127.0.0.1", port))


@dataclass
class Event:
    """One Server-Sent Event (or a comment-only block, such as a heartbeat)."""

    id: str | None = None
    event: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return orjson.loads(self.data)


class EventReader:
    """Reads an SSE response block by block, with deadlines."""

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(5.0, read=5.0))
        request = self.client.build_request("GET", url, headers=dict(headers or {}))
        self.response = self.client.send(request, stream=True)
        self._lines: Iterator[str] = self.response.iter_lines()

    def __enter__(self) -> EventReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.response.close()
        self.client.close()

    def next(self) -> Event:
        """The next block: an event or a comment."""
        event = Event()
        seen = False
        for line in self._lines:
            if not line:
                if seen:
                    return event
                continue
            seen = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                event.comments.append(value)
            elif name == "data":
                event.data = f"{event.data}\n{value}" if event.data else value
            elif name in ("id", "event"):
                setattr(event, name, value)
        raise EOFError("the stream ended")

    def until_heartbeat(self, timeout: float = 10.0) -> list[Event]:
        """The snapshot events before the next heartbeat comment."""
        deadline = time.monotonic() + timeout
        found: list[Event] = []
        while time.monotonic() < deadline:
            event = self.next()
            if event.comments == ["heartbeat"] and event.event is None:
                return found
            if event.event == "snapshot":
                found.append(event)
        raise AssertionError(f"no heartbeat within {timeout} s")

    def snapshots(self, count: int, timeout: float = 10.0) -> list[Event]:
        """The next ``count`` snapshot events (heartbeats skipped)."""
        deadline = time.monotonic() + timeout
        found: list[Event] = []
        while len(found) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} snapshot events in {timeout} s")
            event = self.next()
            if event.event == "snapshot":
                found.append(event)
        return found


class RoundWriter:
    """Writes collector rounds into a database, each right after the previous one."""

    def __init__(self, url: str, last: float) -> None:
        self.url = url
        self.last = last  # start of the newest round written

    def catch_up(self) -> list[float]:
        """Write every round up to the one that ended last; their starts."""
        until = max(self.last + INTERVAL, bucket_start(time.time(), INTERVAL) - INTERVAL)
        return self.write(round((until - self.last) / INTERVAL))

    def write(self, count: int = 1) -> list[float]:
        """Write the next ``count`` rounds; their starts."""
        written = [self.last + INTERVAL * (i + 1) for i in range(count)]
        write_rounds(self.url, written)
        self.last = written[-1]
        return written


def event_ids(events: list[Event]) -> list[int]:
    """The ids of events, as numbers."""
    return [int(str(event.id)) for event in events]


def ms(ts: float) -> int:
    """A round start as its event id."""
    return round(ts * 1000)
