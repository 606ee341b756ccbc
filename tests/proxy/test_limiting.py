"""The proxy's side of the limiter, in process: a ProxyLimiter on a MemoryStore (and, where
replicas meet, on a real Redis), real time.

Waits are kept under two seconds and checked against what they would have been without the
behaviour under test, with margins of hundreds of milliseconds for a loaded machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import pytest

from zai_proxy.limiter import store as s
from zai_proxy.limiter.memory_store import MemoryStore
from zai_proxy.limiter.redis_store import RedisStore
from zai_proxy.limiter.store import (
    Admission,
    Claim,
    LimiterStore,
    StoreConfig,
    StoreUnavailable,
    state_version,
)
from zai_proxy.proxy import limiting
from zai_proxy.proxy.limiting import ProxyLimiter, RateLimited, Ticket
from zai_proxy.shared.outcomes import Outcome

POOL = "glm"
LEASE_TTL = 60.0
WAIT_SECONDS = 5.0  # for conditions that take milliseconds when all is well


def config(**overrides: Any) -> StoreConfig:
    """Hour-long ticks, so that a test's counts all land in one or two of them."""
    return StoreConfig(tick_seconds=3600.0, tick_ttl_seconds=8 * 3600.0, **overrides)


async def save(store: LimiterStore, **fields: str) -> None:
    """Put a rate, cap or probe in force, as the control loop's step would."""
    version = state_version(await store.load_state(POOL))
    assert await store.save_state(POOL, fields, version)


class FlakyStore(MemoryStore):
    """A MemoryStore whose calls can be made to fail, that records the calls made to it."""

    def __init__(self, store_config: StoreConfig) -> None:
        super().__init__(store_config)
        self.down = False  # every call fails
        self.fail_next: set[str] = set()  # these fail once
        self.calls: list[tuple[str, float]] = []  # (method, monotonic time), as they start
        self.done: Counter[str] = Counter()  # calls that returned
        self.ping_gate: asyncio.Event | None = None  # a ping waits for it

    def _check(self, name: str) -> None:
        self.calls.append((name, time.monotonic()))
        if self.down or name in self.fail_next:
            self.fail_next.discard(name)
            raise StoreUnavailable(f"{name}: the store is down")

    def count(self, name: str) -> int:
        return sum(1 for called, _ in self.calls if called == name)

    async def acquire(
        self,
        pool: str,
        lease: str,
        max_wait: float,
        lease_ttl: float,
        claim: Claim | None = None,
    ) -> Admission:
        self._check("acquire")
        admission = await super().acquire(pool, lease, max_wait, lease_ttl, claim)
        self.done["acquire"] += 1
        return admission

    async def report(
        self,
        pool: str,
        ticks: Mapping[int, Mapping[str, float]],
        release: Sequence[str] = (),
        tokens: Mapping[str, int] | None = None,
    ) -> None:
        self._check("report")
        await super().report(pool, ticks, release, tokens)
        self.done["report"] += 1

    async def heartbeat(self, pool: str, replica: str, ttl: float) -> int:
        self._check("heartbeat")
        alive = await super().heartbeat(pool, replica, ttl)
        self.done["heartbeat"] += 1
        return alive

    async def ping(self) -> None:
        if self.ping_gate is not None:
            self.calls.append(("ping-waiting", time.monotonic()))
            await self.ping_gate.wait()
        self._check("ping")
        self.done["ping"] += 1


async def wait_for(condition: Callable[[], object]) -> float:
    """Seconds until condition() (awaited if it returns an awaitable) is true; TimeoutError
    after WAIT_SECONDS."""
    start = time.monotonic()
    async with asyncio.timeout(WAIT_SECONDS):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return time.monotonic() - start
            await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def running(limiter: ProxyLimiter) -> AsyncIterator[None]:
    """The limiter's background task (reports, heartbeats, rejoining) for the block."""
    task = asyncio.create_task(limiter.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def counts_since(store: MemoryStore, start: float) -> dict[str, float]:
    """Everything reported to the pool's ticks from wall time ``start`` until now: sums,
    and the extremes (highest ok_at, lowest refused_at) over the ticks."""
    first, last = store.config.tick_of(start), store.config.tick_of(time.time())
    total: dict[str, float] = {}
    for counts in (await store.read_ticks(POOL, first, last)).values():
        for name, value in counts.items():
            if name in s.MAX_FIELDS:
                total[name] = max(total.get(name, value), value)
            elif name in s.MIN_FIELDS:
                total[name] = min(total.get(name, value), value)
            else:
                total[name] = total.get(name, 0) + value
    return total


def answers(counts: Mapping[str, float]) -> int:
    """How many upstream answers the counts hold, of any class."""
    return int(sum(counts.get(outcome.value, 0) for outcome in Outcome))


async def slot_is_free(store: MemoryStore) -> bool:
    """Whether the pool has room for one more lease, asked past any failures FlakyStore
    would inject; the lease it takes to find out goes back at once."""
    probe = await MemoryStore.acquire(store, POOL, "probe", 0.0, LEASE_TTL)
    await MemoryStore.report(store, POOL, {}, release=["probe"])
    return probe.granted


async def turn(limiter: ProxyLimiter) -> tuple[float, Ticket | RateLimited]:
    """Admit one attempt: the monotonic time it ended, and its ticket or refusal."""
    try:
        ticket: Ticket | RateLimited = await limiter.admit()
    except RateLimited as refused:
        ticket = refused
    return time.monotonic(), ticket


# --- what is counted -----------------------------------------------------------------------


async def test_sent_counts_every_attempt_that_left_and_throttled_every_one_the_rate_held() -> None:
    store = MemoryStore(config(initial_rate=20.0, burst_seconds=0.0))
    limiter = ProxyLimiter(store, POOL, max_wait=0.22)
    start = time.time()
    # Turns at 0, 50, ..., 200 ms; 250 ms is beyond the budget.
    outcomes = await asyncio.gather(*(turn(limiter) for _ in range(6)))
    await limiter.flush()

    tickets = [t for _, t in outcomes if isinstance(t, Ticket)]
    assert len(tickets) == 5 and isinstance(outcomes[-1][1], RateLimited)
    counts = await counts_since(store, start)
    # Four waited for their turn and one was refused: demand was above the rate five times.
    assert (counts["sent"], counts["throttled"]) == (5, 5)
    assert "capped" not in counts and answers(counts) == 0
    assert [t.waited == 0 for t in tickets] == [True, False, False, False, False]


async def test_an_attempt_that_waited_for_a_concurrency_slot_is_counted_capped_once() -> None:
    store = MemoryStore(config(initial_rate=1000.0))
    await save(store, rate="1000", concurrency="1")
    limiter = ProxyLimiter(store, POOL, max_wait=2.0)
    start = time.time()
    async with running(limiter):
        held = await limiter.admit()
        waiting = asyncio.create_task(limiter.admit())
        await asyncio.sleep(0.3)  # several polls
        await limiter.record(held, Outcome.OK)
        second = await waiting
        await limiter.record(second, Outcome.OK)
        await limiter.flush()
    counts = await counts_since(store, start)
    assert (counts["sent"], counts["capped"], counts["ok"]) == (2, 1, 2)
    assert "throttled" not in counts
    # It waited, so it is no evidence of where the cap is (see the next tests).
    assert second.waited > 0.2


async def test_ok_answers_count_their_latency_and_the_highest_in_flight_count_they_came_at() -> (
    None
):
    store = MemoryStore(config(initial_rate=1000.0))
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    start = time.time()
    tickets = [await limiter.admit() for _ in range(3)]
    assert [t.in_flight for t in tickets] == [1, 2, 3]
    await asyncio.sleep(0.1)
    await limiter.record(tickets[2], Outcome.OK)
    await limiter.record(tickets[0], Outcome.OK)
    await limiter.record(tickets[1], Outcome.SERVER_ERROR)
    await limiter.flush()

    counts = await counts_since(store, start)
    assert (counts["ok"], counts["server_error"], counts["ok_at"]) == (2, 1, 3)
    assert counts["latency_count"] == 2
    assert 0.19 <= counts["latency_sum"] < 0.2 + 0.5
    assert "refused_at" not in counts


async def test_an_ok_answer_under_an_older_cap_or_after_a_wait_is_no_evidence_of_the_cap() -> None:
    store = MemoryStore(config(initial_rate=1000.0))
    await save(store, rate="1000", concurrency="4", epoch="1")
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    start = time.time()
    old = [await limiter.admit() for _ in range(3)]
    assert {t.epoch for t in old} == {1}
    await save(store, rate="1000", concurrency="4", epoch="2")
    new = await limiter.admit()  # its answer teaches the limiter the new epoch
    assert (new.epoch, limiter.epoch) == (2, 2)
    for ticket in old:
        await limiter.record(ticket, Outcome.OK)
    waited = Ticket("waited", 0.3, False, in_flight=7, epoch=2, sent_at=time.monotonic())
    await limiter.record(waited, Outcome.OK)
    await limiter.record(new, Outcome.OK)
    await limiter.flush()

    counts = await counts_since(store, start)
    # Only the answer sent without waiting under the cap in force says where it is.
    assert (counts["ok"], counts["ok_at"]) == (5, new.in_flight)


async def test_an_ok_answer_after_a_wait_for_a_slot_is_evidence_of_the_cap(
    no_polls: None,
) -> None:
    # Under a full cap every attempt waits for a slot; it is granted when one frees and
    # goes out at once, at the count acquire gave it: exact, as the cap probes need.
    store = MemoryStore(config(initial_rate=1000.0))
    await save(store, rate="1000", concurrency="2", epoch="1")
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    async with running(limiter):
        start = time.time()
        older = [await limiter.admit() for _ in range(2)]
        await save(store, rate="1000", concurrency="2", epoch="2")
        queued = asyncio.create_task(limiter.admit())
        await wait_for(lambda: len(limiter._slot_waiters) == 1)
        await limiter.record(older[0], Outcome.OK)
        ticket = await queued
        assert ticket.waited > 0 and ticket.exact and (ticket.epoch, ticket.in_flight) == (2, 2)
        await limiter.record(ticket, Outcome.OK)
        await limiter.record(older[1], Outcome.OK)
        await limiter.flush()
    counts = await counts_since(store, start)
    assert (counts["ok"], counts["ok_at"]) == (3, 2)


async def test_a_1302_counts_its_lowest_in_flight_count_and_caps_an_open_pool_at_once() -> None:
    store = MemoryStore(config(initial_rate=1000.0))
    await save(store, rate="1000", concurrency="", cap_floor="1")
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    start = time.time()
    tickets = [await limiter.admit() for _ in range(5)]
    await limiter.record(tickets[4], Outcome.RATE_CONCURRENCY)
    # Reported before record returns (no background task runs here), and pushed: the
    # first 1302 caps the open pool, so its retry meets the cap.
    saved = await store.load_state(POOL)
    assert saved is not None and saved["concurrency"] == "4"
    # A cap in force is the law's to lower (it weighs the ok answers too): no push.
    await limiter.record(tickets[3], Outcome.RATE_CONCURRENCY)
    saved = await store.load_state(POOL)
    assert saved is not None and saved["concurrency"] == "4"

    counts = await counts_since(store, start)
    assert (counts["rate_concurrency"], counts["refused_at"], counts["sent"]) == (2, 4, 5)
    await limiter.record(tickets[0], Outcome.OK)
    await limiter.flush()
    retry = await limiter.admit()
    assert (limiter.concurrency, retry.in_flight) == (4, 3)


async def test_a_1302_after_a_wait_counts_the_in_flight_count_at_grant_as_a_bound() -> None:
    store = MemoryStore(config(initial_rate=1000.0))
    await save(store, rate="1000", concurrency="6", cap_floor="1")
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    start = time.time()
    # Granted with 4 in flight, sent after a wait: those ahead may have finished by then,
    # so 4 bounds the count it went out at from above (the cut it gives is never too deep).
    waited = Ticket("waited", 0.3, False, in_flight=4, epoch=0, sent_at=time.monotonic())
    await limiter.record(waited, Outcome.RATE_CONCURRENCY)
    counts = await counts_since(store, start)
    assert (counts["rate_concurrency"], counts["refused_at"]) == (1, 4)
    saved = await store.load_state(POOL)
    assert saved is not None and saved["concurrency"] == "6"  # the law's to lower


async def test_a_frequency_429_is_reported_at_once_and_ends_a_probe_before_its_retry() -> None:
    store = FlakyStore(config(initial_rate=1000.0, burst_seconds=0.0))
    await save(store, rate="40.0", probe_base="20.0", concurrency="")
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    ticket = await limiter.admit()
    assert limiter.rate == 40.0

    await limiter.record(ticket, Outcome.RATE_FREQUENCY)
    assert store.done["report"] == 1  # no background task: record flushed it
    saved = await store.load_state(POOL)
    assert saved is not None and (saved["rate"], saved["probe_base"]) == ("20.0", "")
    await limiter.admit()  # the retry
    assert limiter.rate == 20.0


@pytest.mark.parametrize("outcome", [Outcome.OK, Outcome.RATE_QUOTA, Outcome.SERVER_ERROR])
async def test_other_answers_wait_for_the_background_flush(outcome: Outcome) -> None:
    store = FlakyStore(config(initial_rate=1000.0))
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    await limiter.record(await limiter.admit(), outcome)
    assert store.done["report"] == 0
    await limiter.flush()
    assert store.done["report"] == 1


@pytest.mark.parametrize("outcome", [None, Outcome.OK, Outcome.RATE_FREQUENCY])
async def test_record_releases_the_lease_and_counts_the_outcome_unless_there_is_none(
    outcome: Outcome | None,
) -> None:
    store = MemoryStore(config(initial_rate=1000.0))
    await save(store, rate="1000", concurrency="1")
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    start = time.time()
    ticket: Ticket = await limiter.admit()
    await limiter.record(ticket, outcome)
    await limiter.flush()

    assert await slot_is_free(store)
    counts = await counts_since(store, start)
    assert answers(counts) == (0 if outcome is None else 1)
    assert counts["sent"] == 1
    if outcome is not None:
        assert counts[outcome.value] == 1


# --- waits follow the rate -----------------------------------------------------------------


@pytest.mark.parametrize("new_rate", [1.0, 8.0])
async def test_waiting_requests_rescale_what_is_left_of_their_wait_when_the_rate_changes(
    new_rate: float,
) -> None:
    store = MemoryStore(config(initial_rate=2.0, burst_seconds=0.0))
    limiter = ProxyLimiter(store, POOL, max_wait=10.0)
    start = time.monotonic()
    waiting = [asyncio.create_task(turn(limiter)) for _ in range(3)]  # at 0, 0.5 and 1 s
    await asyncio.sleep(0.1)

    await save(store, rate=repr(new_rate), concurrency="")
    changed = time.monotonic()
    # The next answer carries the new rate; the requests already waiting learn it from it.
    late = asyncio.create_task(turn(limiter))
    ends = [end for end, _ in await asyncio.gather(*waiting)]
    late.cancel()
    assert limiter.rate == new_rate

    for index in (1, 2):
        granted = start + 0.5 * index
        rescaled = changed + (granted - changed) * 2.0 / new_rate
        assert ends[index] >= rescaled - 0.01
        # Nearer the rescaled turn than the one first granted, by a wide margin.
        assert abs(ends[index] - rescaled) < abs(granted - rescaled) / 2


async def test_waiting_requests_go_at_once_when_the_rate_is_lifted() -> None:
    store = MemoryStore(config(initial_rate=1.0, burst_seconds=0.0))
    limiter = ProxyLimiter(store, POOL, max_wait=10.0)
    waiting = [asyncio.create_task(turn(limiter)) for _ in range(3)]  # at 0, 1 and 2 s
    await asyncio.sleep(0.1)

    await save(store, rate="inf", concurrency="")
    lifted = time.monotonic()
    late = await turn(limiter)
    ends = [end for end, _ in await asyncio.gather(*waiting)]
    assert limiter.rate == math.inf
    assert isinstance(late[1], Ticket) and late[1].waited == 0
    assert max(ends) - lifted < 0.3  # not 1.9 s, when the last turn was due


async def test_a_waiting_request_gives_up_with_a_proxy_429_when_its_wait_would_pass_max_wait() -> (
    None
):
    store = MemoryStore(config(initial_rate=2.0, burst_seconds=0.0))
    limiter = ProxyLimiter(store, POOL, max_wait=1.5)
    waiting = [asyncio.create_task(turn(limiter)) for _ in range(3)]  # at 0, 0.5 and 1 s
    await asyncio.sleep(0.1)

    # Half the rate: 0.4 s left becomes 0.8 s, within the 1.5 s budget; 0.9 s becomes 1.8 s.
    await save(store, rate="1.0", concurrency="")
    changed = time.monotonic()
    late = asyncio.create_task(turn(limiter))
    (_, first), (_, kept), (gave_up_at, gave_up) = await asyncio.gather(*waiting)

    assert isinstance(first, Ticket) and isinstance(kept, Ticket)
    assert isinstance(gave_up, RateLimited)
    assert gave_up_at - changed < 0.5  # at once, not at the end of its old wait
    assert gave_up.status == 429
    assert (b"x-ratelimit-source", b"proxy") in gave_up.headers()
    # The store cut its backlog at max_wait too: no turn within the budget is left.
    assert isinstance((await late)[1], RateLimited)


# --- the concurrency cap -------------------------------------------------------------------


async def test_a_request_at_the_cap_is_admitted_as_soon_as_this_replica_frees_a_slot() -> None:
    store = FlakyStore(config(initial_rate=1000.0))
    await save(store, rate="1000", concurrency="1")
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    async with running(limiter):
        held = await limiter.admit()
        waiting = asyncio.create_task(turn(limiter))
        await asyncio.sleep(1.0)  # by now it asks every 0.25-0.5 s
        assert not waiting.done()
        released = time.monotonic()
        await limiter.record(held, Outcome.OK)
        admitted_at, ticket = await waiting
    assert isinstance(ticket, Ticket)
    # Woken by the release (batched within RELEASE_SECONDS), not by its next poll.
    assert admitted_at - released < 0.15


@pytest.fixture
def no_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiters for a slot never ask again by themselves: only an announcement wakes them."""
    monkeypatch.setattr(limiting, "CONCURRENCY_POLL_SECONDS", 30.0)
    monkeypatch.setattr(limiting, "CONCURRENCY_POLL_MAX_SECONDS", 30.0)


@pytest.fixture(params=["memory", "redis"])
async def two_replicas(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[LimiterStore, LimiterStore]]:
    """The store as two replicas see it: one MemoryStore, or two clients of a real Redis."""
    if request.param == "memory":
        memory = MemoryStore(config(initial_rate=1000.0))
        yield memory, memory
        return
    url = request.getfixturevalue("real_redis_url")
    shared = config(initial_rate=1000.0, prefix=f"test{uuid.uuid4().hex[:12]}")
    stores = (RedisStore.from_url(url, shared), RedisStore.from_url(url, shared))
    try:
        yield stores
    finally:
        await stores[0].reset(POOL)
        for store in stores:
            await store.close()


async def test_a_slot_another_replica_frees_wakes_the_oldest_waiter_at_once(
    no_polls: None, two_replicas: tuple[LimiterStore, LimiterStore]
) -> None:
    first, second = two_replicas
    await save(first, rate="1000", concurrency="1")
    holder = ProxyLimiter(first, POOL, max_wait=10.0, replica="a")
    waiting = ProxyLimiter(second, POOL, max_wait=10.0, replica="b")
    async with running(holder), running(waiting):
        held = await holder.admit()
        oldest = asyncio.create_task(turn(waiting))
        await wait_for(lambda: len(waiting._slot_waiters) == 1)
        newest = asyncio.create_task(turn(waiting))
        await wait_for(lambda: len(waiting._slot_waiters) == 2)

        released = time.monotonic()
        await holder.record(held, Outcome.OK)
        admitted_at, ticket = await oldest
        assert isinstance(ticket, Ticket)
        assert admitted_at - released < 0.15  # the announcement, not a poll 30 s away
        await asyncio.sleep(0.2)
        assert not newest.done()  # one slot freed, one waiter woken

        released = time.monotonic()
        await waiting.record(ticket, Outcome.OK)
        admitted_at, later = await newest
    assert isinstance(later, Ticket)
    assert admitted_at - released < 0.15


async def test_a_raised_cap_wakes_as_many_waiters_as_it_adds_slots(no_polls: None) -> None:
    store = MemoryStore(config(initial_rate=1000.0))
    await save(store, rate="1000", concurrency="1")
    limiter = ProxyLimiter(store, POOL, max_wait=10.0)
    async with running(limiter):
        await limiter.admit()
        waiters: list[asyncio.Task[tuple[float, Ticket | RateLimited]]] = []

        def queued() -> bool:
            return len(limiter._slot_waiters) == len(waiters)

        for _ in range(3):
            waiters.append(asyncio.create_task(turn(limiter)))
            await wait_for(queued)
        raised = time.monotonic()
        await save(store, rate="1000", concurrency="3")  # the law raised the cap by two
        done, _ = await asyncio.wait(waiters, timeout=1.0)
        assert [w in done for w in waiters] == [True, True, False]  # oldest first
        assert all(admitted - raised < 0.15 for admitted, _ in (w.result() for w in done))
        await save(store, rate="1000", concurrency="")  # lifted: every waiter goes
        admitted_at, last = await waiters[2]
    assert isinstance(last, Ticket)
    assert admitted_at - raised < 1.5


async def test_at_the_cap_a_request_polls_less_and_less_often_then_gets_a_proxy_429() -> None:
    store = FlakyStore(config(initial_rate=1000.0))
    await save(store, rate="1000", concurrency="1")  # a learned cap
    limiter = ProxyLimiter(store, POOL, max_wait=1.5)
    await limiter.admit()
    calls_before = store.count("acquire")

    started = time.monotonic()
    with pytest.raises(RateLimited) as refused:
        await limiter.admit()
    assert time.monotonic() - started < 1.5 + 0.3  # the budget, not longer
    polls = store.count("acquire") - calls_before
    # Doubling from 50 ms (with jitter) asks 5 to 8 times in 1.5 s; a fixed 50 ms, ~40.
    assert 4 <= polls <= 10
    assert refused.value.status == 429
    assert (b"x-ratelimit-source", b"proxy") in refused.value.headers()


# --- store failures ------------------------------------------------------------------------


@pytest.mark.parametrize("ping_fails", [False, True])
async def test_one_failed_store_call_admits_locally_and_degrades_only_if_a_ping_fails_too(
    ping_fails: bool,
) -> None:
    store = FlakyStore(config(initial_rate=1000.0))
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    async with running(limiter):
        await wait_for(lambda: store.done["heartbeat"])
        store.ping_gate = gate = asyncio.Event()
        store.fail_next.add("acquire")
        if ping_fails:
            store.fail_next.add("ping")

        ticket = await limiter.admit()
        assert ticket.local  # the failed request is served, by the local limiter
        await wait_for(lambda: store.count("ping-waiting"))
        assert not limiter.degraded  # one failure is only a suspicion

        gate.set()
        if ping_fails:
            await wait_for(lambda: limiter.degraded)
        else:
            await wait_for(lambda: store.done["ping"])
            await asyncio.sleep(0.05)
            assert not limiter.degraded
        acquires = store.count("acquire")
        assert (await limiter.admit()).local is ping_fails
        assert store.count("acquire") == acquires + (0 if ping_fails else 1)


async def test_a_degraded_proxy_admits_at_its_share_of_the_last_known_rate() -> None:
    store = FlakyStore(config(initial_rate=1000.0, burst_seconds=0.0))
    await save(store, rate="10.0", concurrency="")
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    await store.heartbeat(POOL, "another-replica", 60.0)
    async with running(limiter):
        await wait_for(lambda: limiter.replicas == 2)
        await limiter.admit()  # learns the shared rate
        assert limiter.rate == 10.0
        store.down = True
        await wait_for(lambda: limiter.degraded)
        tickets = [await limiter.admit() for _ in range(3)]
    assert all(t.local for t in tickets)
    # Half of 10 req/s: one after another, each waits 0.2 s (the first may go at once).
    assert [t.waited for t in tickets[1:]] == pytest.approx([0.2, 0.2], abs=0.05)


async def test_shared_counts_and_releases_kept_in_an_outage_go_out_when_the_store_is_back() -> None:
    store = FlakyStore(config(initial_rate=1000.0))
    await save(store, rate="1000", concurrency="1")
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    start = time.time()
    async with running(limiter):
        shared = await limiter.admit()
        assert not shared.local and not await slot_is_free(store)
        await limiter.flush()  # sent: 1

        store.down = True
        # The failed acquire is a suspicion; the ping that follows fails too.
        local = await limiter.admit()
        assert local.local
        await wait_for(lambda: limiter.degraded)
        for _ in range(2):
            await limiter.record(local, Outcome.OK)  # frees the local share of the cap
            local = await limiter.admit()
            assert local.local
        await limiter.record(shared, Outcome.OK)
        # Pings go on failing for a while: nothing kept may be lost meanwhile.
        failed_pings = store.count("ping")
        await wait_for(lambda: store.count("ping") >= failed_pings + 2)
        assert limiter.degraded

        store.down = False
        await wait_for(lambda: not limiter.degraded)
        await wait_for(lambda: store.done["report"])
        counts = await counts_since(store, start)
        # The three attempts the local store admitted stay out of the shared counts, sends
        # and outcomes alike (the law would read sends with no answers as silence); the
        # shared one was sent and answered.
        assert (counts["sent"], counts["ok"], answers(counts)) == (1, 1, 1)
        assert await slot_is_free(store)  # the shared lease went back


async def test_a_finished_attempt_releases_its_lease_within_the_release_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The periodic flush is pushed out of reach: only the release path can free the slot.
    monkeypatch.setattr(limiting, "FLUSH_SECONDS", 30.0)
    store = FlakyStore(config(initial_rate=1000.0))
    await save(store, rate="1000", concurrency="1")
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    async with running(limiter):
        await wait_for(lambda: store.done["heartbeat"])
        ticket = await limiter.admit()
        assert not await slot_is_free(store)

        await limiter.record(ticket, Outcome.OK)
        released = await wait_for(lambda: slot_is_free(store))
    assert released < 0.5  # RELEASE_SECONDS is 5 ms; the next flush is 30 s away
