"""The proxy's side of the limiter, in process: a ProxyLimiter on a MemoryStore, real time.

Waits are kept under two seconds and checked against what they would have been without the
behaviour under test, with margins of hundreds of milliseconds for a loaded machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import pytest

from zai_proxy.limiter.memory_store import MemoryStore
from zai_proxy.limiter.outcomes import Outcome, Window
from zai_proxy.limiter.store import Admission, StoreConfig, StoreUnavailable
from zai_proxy.proxy import limiting
from zai_proxy.proxy.limiting import ProxyLimiter, RateLimited, Ticket

POOL = "glm"
LEASE_TTL = 60.0
WAIT_SECONDS = 5.0  # for conditions that take milliseconds when all is well


def config(**overrides: Any) -> StoreConfig:
    """Hour-long windows, so that a test's counts all land in one or two of them."""
    return StoreConfig(window_seconds=3600.0, window_ttl_seconds=7200.0, **overrides)


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
        self, pool: str, lease: str, max_wait: float, lease_ttl: float, demand: bool = True
    ) -> Admission:
        self._check("acquire")
        admission = await super().acquire(pool, lease, max_wait, lease_ttl, demand)
        self.done["acquire"] += 1
        return admission

    async def report(
        self, pool: str, window: int, counts: Mapping[str, int], release: Sequence[str] = ()
    ) -> None:
        self._check("report")
        await super().report(pool, window, counts, release)
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


async def counts_since(store: MemoryStore, start: float) -> Window:
    """Everything reported to the pool's windows from wall time ``start`` until now."""
    first, last = store.config.window_of(start), store.config.window_of(time.time())
    total: Counter[str] = Counter()
    for index in range(first, last + 1):
        total.update(await store.read_window(POOL, index))
    total.pop("peak_concurrency", None)
    return Window.from_counts(total)


async def slot_is_free(store: MemoryStore) -> bool:
    """Whether the pool has room for one more lease, asked past any failures FlakyStore
    would inject; the lease it takes to find out goes back at once."""
    probe = await MemoryStore.acquire(store, POOL, "probe", 0.0, LEASE_TTL, demand=False)
    await MemoryStore.report(store, POOL, 0, {}, release=["probe"])
    return probe.granted


async def turn(limiter: ProxyLimiter) -> tuple[float, Ticket | RateLimited]:
    """Admit one attempt: the monotonic time it ended, and its ticket or refusal."""
    try:
        ticket: Ticket | RateLimited = await limiter.admit()
    except RateLimited as refused:
        ticket = refused
    return time.monotonic(), ticket


async def test_demand_is_counted_when_a_request_arrives_not_when_it_is_admitted() -> None:
    store = MemoryStore(config(initial_rate=1000.0))
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    start = time.time()
    for _ in range(3):
        limiter.arrived()
    await limiter.flush()
    assert (await counts_since(store, start)).demand == 3

    for _ in range(2):
        await limiter.admit()
    await limiter.flush()
    assert (await counts_since(store, start)).demand == 3


@pytest.mark.parametrize("new_rate", [1.0, 8.0])
async def test_waiting_requests_rescale_what_is_left_of_their_wait_when_the_rate_changes(
    new_rate: float,
) -> None:
    store = MemoryStore(config(initial_rate=2.0, burst_seconds=0.0))
    limiter = ProxyLimiter(store, POOL, max_wait=10.0)
    start = time.monotonic()
    waiting = [asyncio.create_task(turn(limiter)) for _ in range(3)]  # at 0, 0.5 and 1 s
    await asyncio.sleep(0.1)

    await store.save_state(POOL, {"rate": repr(new_rate), "concurrency": "256"})
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


async def test_a_waiting_request_gives_up_with_a_proxy_429_when_its_wait_would_pass_max_wait() -> (
    None
):
    store = MemoryStore(config(initial_rate=2.0, burst_seconds=0.0))
    limiter = ProxyLimiter(store, POOL, max_wait=1.5)
    waiting = [asyncio.create_task(turn(limiter)) for _ in range(3)]  # at 0, 0.5 and 1 s
    await asyncio.sleep(0.1)

    # Half the rate: 0.4 s left becomes 0.8 s, within the 1.5 s budget; 0.9 s becomes 1.8 s.
    await store.save_state(POOL, {"rate": "1.0", "concurrency": "256"})
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


async def test_a_concurrency_refusal_at_the_maximum_cap_is_a_429_at_once() -> None:
    store = FlakyStore(config(initial_rate=1000.0, initial_concurrency=2))
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    held = [await limiter.admit() for _ in range(2)]
    assert len(held) == 2
    calls_before = store.count("acquire")

    started = time.monotonic()
    with pytest.raises(RateLimited) as refused:
        await limiter.admit()
    assert time.monotonic() - started < 1.0  # of a 5 s budget
    assert store.count("acquire") == calls_before + 1
    assert refused.value.status == 429
    assert (b"x-ratelimit-source", b"proxy") in refused.value.headers()


async def test_below_the_maximum_cap_a_concurrency_refusal_polls_less_and_less_often() -> None:
    store = FlakyStore(config(initial_rate=1000.0, initial_concurrency=64))
    await store.save_state(POOL, {"rate": "1000", "concurrency": "1"})  # a learned cap
    limiter = ProxyLimiter(store, POOL, max_wait=1.5)
    await limiter.admit()
    calls_before = store.count("acquire")

    with pytest.raises(RateLimited):
        await limiter.admit()
    polls = store.count("acquire") - calls_before
    # Doubling from 50 ms (with jitter) asks 5 to 8 times in 1.5 s; a fixed 50 ms, ~40.
    assert 4 <= polls <= 10


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


async def test_counts_and_releases_kept_during_an_outage_are_sent_when_the_store_is_back() -> None:
    store = FlakyStore(config(initial_rate=1000.0, initial_concurrency=1))
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    start = time.time()
    async with running(limiter):
        shared = await limiter.admit()
        assert not shared.local and not await slot_is_free(store)

        store.down = True
        assert (await limiter.admit()).local
        await wait_for(lambda: limiter.degraded)
        for _ in range(3):
            limiter.arrived()
        await limiter.record(shared, Outcome.OK)
        # Pings go on failing for a while: nothing kept may be lost meanwhile.
        failed_pings = store.count("ping")
        await wait_for(lambda: store.count("ping") >= failed_pings + 2)
        assert limiter.degraded

        store.down = False
        await wait_for(lambda: not limiter.degraded)
        await wait_for(lambda: store.done["report"])
        counts = await counts_since(store, start)
        assert (counts.demand, counts.ok) == (3, 1)
        assert await slot_is_free(store)  # the shared lease went back


async def test_a_finished_attempt_releases_its_lease_within_the_release_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The periodic flush is pushed out of reach: only the release path can free the slot.
    monkeypatch.setattr(limiting, "FLUSH_SECONDS", 30.0)
    store = FlakyStore(config(initial_rate=1000.0, initial_concurrency=1))
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    async with running(limiter):
        await wait_for(lambda: store.done["heartbeat"])
        ticket = await limiter.admit()
        assert not await slot_is_free(store)

        await limiter.record(ticket, Outcome.OK)
        released = await wait_for(lambda: slot_is_free(store))
    assert released < 0.5  # RELEASE_SECONDS is 0.02 s; the next flush is 30 s away


@pytest.mark.parametrize("outcome", [None, Outcome.OK, Outcome.RATE_FREQUENCY])
async def test_record_releases_the_lease_and_counts_the_outcome_unless_there_is_none(
    outcome: Outcome | None,
) -> None:
    store = MemoryStore(config(initial_rate=1000.0, initial_concurrency=1))
    limiter = ProxyLimiter(store, POOL, max_wait=5.0)
    start = time.time()
    ticket: Ticket = await limiter.admit()
    await limiter.record(ticket, outcome)
    await limiter.flush()

    assert await slot_is_free(store)
    counts = await counts_since(store, start)
    assert counts.attempts == (0 if outcome is None else 1)
    if outcome is not None:
        assert counts.count(outcome) == 1
