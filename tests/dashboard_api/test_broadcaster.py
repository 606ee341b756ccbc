"""The live stream's logic without processes: polling, fan-out, slow clients, resuming."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import cast

import pytest

from zai_proxy.dashboard_api.events import (
    REPLAY_SECONDS,
    Broadcaster,
    Sent,
    Subscription,
    TooManyClients,
    stream,
)
from zai_proxy.dashboard_api.points import Round, event_id
from zai_proxy.dashboard_api.queries import HistoryReader

NOW = 1_795_750_000.0


class FakeReader:
    """Rows of (round start, variant), as the finest resolution would hold them."""

    def __init__(self, rows: Iterable[tuple[float, str]] = ()) -> None:
        self.rows = sorted(rows)
        self.seen: set[str] = set()

    def add(self, *rows: tuple[float, str]) -> None:
        self.rows = sorted([*self.rows, *rows])

    async def newest_round(self) -> float | None:
        return self.rows[-1][0] if self.rows else None

    async def rounds_from(self, start: float) -> list[Round]:
        rounds: list[Round] = []
        for ts, variant in self.rows:
            if ts >= start - 0.0005:
                if not rounds or rounds[-1].ts != ts:
                    rounds.append(Round(ts))
                rounds[-1].points[variant] = {"ts": ts, "variant": variant}
        return rounds

    def saw(self, variants: Iterable[str]) -> None:
        self.seen.update(variants)


def broadcaster(reader: FakeReader, *, backlog: int = 4, max_clients: int = 10) -> Broadcaster:
    return Broadcaster(
        cast(HistoryReader, reader),
        poll_interval=1.0,
        backlog=backlog,
        max_clients=max_clients,
        clock=lambda: NOW,
    )


def both(ts: float) -> list[tuple[float, str]]:
    return [(ts, "production"), (ts, "canary")]


def batches(subscription: Subscription) -> list[list[tuple[int, list[str]]]]:
    found = []
    while not subscription.queue.empty():
        batch = subscription.queue.get_nowait()
        found.append([(r.id, sorted(r.points)) for r in batch])
    return found


async def test_rounds_from_before_the_start_are_not_news() -> None:
    reader = FakeReader(both(NOW - 10) + both(NOW - 5))
    hub = broadcaster(reader)
    client = hub.subscribe()
    assert await hub.poll() == []  # primes the cursor
    assert await hub.poll() == []
    assert batches(client) == []


async def test_each_new_round_is_offered_once_to_every_client() -> None:
    reader = FakeReader(both(NOW - 5))
    hub = broadcaster(reader)
    await hub.poll()
    first, second = hub.subscribe(), hub.subscribe()
    reader.add(*both(NOW), *both(NOW + 5))
    await hub.poll()
    await hub.poll()
    both_variants = ["canary", "production"]
    expected = [[(event_id(NOW), both_variants), (event_id(NOW + 5), both_variants)]]
    assert batches(first) == batches(second) == expected
    assert reader.seen == {"production", "canary"}


async def test_the_first_rounds_of_an_empty_database_are_news() -> None:
    reader = FakeReader()
    hub = broadcaster(reader)
    await hub.poll()
    client = hub.subscribe()
    reader.add(*both(NOW))
    await hub.poll()
    assert batches(client) == [[(event_id(NOW), ["canary", "production"])]]


async def test_a_late_variant_of_the_newest_round_follows_alone_with_the_same_id() -> None:
    reader = FakeReader()
    hub = broadcaster(reader)
    await hub.poll()
    client = hub.subscribe()
    reader.add((NOW, "production"))
    await hub.poll()
    reader.add((NOW, "canary"))
    await hub.poll()
    await hub.poll()
    assert batches(client) == [
        [(event_id(NOW), ["production"])],
        [(event_id(NOW), ["canary"])],
    ]


async def test_a_late_variant_of_the_round_in_progress_at_start_is_still_sent() -> None:
    reader = FakeReader([(NOW, "production")])
    hub = broadcaster(reader)
    await hub.poll()
    client = hub.subscribe()
    reader.add((NOW, "canary"))
    await hub.poll()
    assert batches(client) == [[(event_id(NOW), ["canary"])]]


async def test_rounds_older_than_the_replay_window_are_not_news() -> None:
    reader = FakeReader()
    hub = broadcaster(reader)
    await hub.poll()
    client = hub.subscribe()
    reader.add(*both(NOW - REPLAY_SECONDS - 5))
    await hub.poll()
    assert batches(client) == []


async def test_a_client_whose_queue_is_full_is_dropped_and_the_others_are_not() -> None:
    reader = FakeReader()
    hub = broadcaster(reader, backlog=2)
    await hub.poll()
    stalled, reading = hub.subscribe(), hub.subscribe()
    cancelled: list[bool] = []
    stalled.on_drop = lambda: cancelled.append(True)
    for i in range(3):
        reader.add(*both(NOW + 5 * i))
        await hub.poll()
        batches(reading)  # this one keeps up
    assert stalled.dropped and cancelled == [True]
    assert hub.subscribers == {reading} and hub.dropped == 1
    reader.add(*both(NOW + 15))
    await hub.poll()
    assert batches(reading) == [[(event_id(NOW + 15), ["canary", "production"])]]


def test_clients_beyond_the_bound_are_refused_until_one_leaves() -> None:
    hub = broadcaster(FakeReader(), max_clients=2)
    first, _second = hub.subscribe(), hub.subscribe()
    with pytest.raises(TooManyClients):
        hub.subscribe()
    first.close()
    hub.subscribe()


def r(ts: float, *variants: str) -> Round:
    return Round(ts, {v: {"variant": v} for v in variants})


@pytest.mark.parametrize(
    ("last_id", "sent_before", "offered", "expected"),
    [
        (None, [], r(NOW, "a", "b"), ["a", "b"]),  # a new client takes anything
        (event_id(NOW), [], r(NOW, "a", "b"), None),  # the client's own last id: had it all
        (event_id(NOW), [], r(NOW - 5, "a"), None),  # older
        (event_id(NOW), [], r(NOW + 5, "a"), ["a"]),  # newer
        (None, [r(NOW, "a")], r(NOW, "a", "b"), ["b"]),  # the late variant only
        (None, [r(NOW, "a", "b")], r(NOW, "a", "b"), None),  # a repeat
        (None, [r(NOW + 5, "a")], r(NOW, "b"), None),  # behind what was sent
    ],
)
def test_a_client_is_sent_each_round_and_variant_once(
    last_id: int | None, sent_before: list[Round], offered: Round, expected: list[str] | None
) -> None:
    sent = Sent(last_id)
    for round_ in sent_before:
        sent.unsent(round_)
    unsent = sent.unsent(offered)
    assert (None if unsent is None else sorted(unsent.points)) == expected


async def test_a_resumed_stream_replays_then_goes_live_without_repeats() -> None:
    reader = FakeReader(both(NOW) + both(NOW + 5) + both(NOW + 10))
    hub = broadcaster(reader)
    subscription = hub.subscribe()
    # The live queue already holds a round the replay also finds, and a new one.
    subscription.offer([r(NOW + 10, "production", "canary"), r(NOW + 15, "production")])
    events = stream(subscription, cast(HistoryReader, reader), event_id(NOW), clock=lambda: NOW)
    ids = [await asyncio.wait_for(anext(events), 1) for _ in range(3)]
    assert [int(str(e.id)) for e in ids] == [
        event_id(NOW + 5),
        event_id(NOW + 10),
        event_id(NOW + 15),
    ]
    assert all(e.event == "snapshot" for e in ids)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(events), 0.05)
