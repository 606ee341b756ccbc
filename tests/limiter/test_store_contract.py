"""The limiter store contract, run against the in-memory store, fakeredis and a real Redis.

Every contract test gets a ``backend`` that opens stores sharing one state: on Redis each
``open`` is a new client (another proxy), in memory it is the one store of the process.
Times come from the stores' own clocks (``Admission.now``), so expected waits are exact;
TTLs are a few hundred milliseconds so that the file stays fast on a real Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import fakeredis
import pytest
import redis.asyncio
from redis.crc import key_slot

from zai_proxy.limiter import keys
from zai_proxy.limiter.memory_store import MemoryStore
from zai_proxy.limiter.outcomes import Window
from zai_proxy.limiter.redis_store import RedisStore
from zai_proxy.limiter.store import (
    CONCURRENCY_RETRY_SECONDS,
    Admission,
    LimiterStore,
    StoreConfig,
    StoreError,
    StoreUnavailable,
)
from zai_proxy.limiter.stores import open_store

POOL = "glm"
LEASE_TTL = 30.0
# Times are epoch-second doubles (a quarter of a microsecond apart at today's dates) and a
# TAT is a running sum of intervals, so "exactly" means to within ten microseconds.
EXACT = 1e-5


class Backend:
    """Opens stores that share one backend's state, and cleans up after the test."""

    def __init__(self, prefix: str, connect: Callable[[StoreConfig], LimiterStore]) -> None:
        self.prefix = prefix
        self._connect = connect
        self._opened: list[LimiterStore] = []

    async def open(self, **overrides: Any) -> LimiterStore:
        """A store on this backend (under the test's own key prefix)."""
        store = self._connect(StoreConfig(prefix=self.prefix, **overrides))
        self._opened.append(store)
        return store

    async def close(self) -> None:
        for store in self._opened:
            await store.close()


def _memory_backend(prefix: str) -> Backend:
    # One process has one store per configuration: every "proxy" shares it.
    stores: dict[StoreConfig, MemoryStore] = {}
    return Backend(prefix, lambda config: stores.setdefault(config, MemoryStore(config)))


def _fakeredis_backend(prefix: str) -> Backend:
    server = fakeredis.FakeServer()
    return Backend(
        prefix,
        lambda config: RedisStore(
            fakeredis.FakeAsyncRedis(server=server), config, owns_client=True
        ),
    )


@pytest.fixture(params=["memory", "fakeredis", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Each contract test runs once per backend, under a key prefix of its own."""
    prefix = f"test{uuid.uuid4().hex[:12]}"
    if request.param == "memory":
        store_backend = _memory_backend(prefix)
    elif request.param == "fakeredis":
        store_backend = _fakeredis_backend(prefix)
    else:
        url = request.getfixturevalue("real_redis_url")
        # The contract is about semantics, not latency: generous timeouts keep a loaded
        # CI machine from turning a slow answer (or a slow connect, when 200 calls open
        # connections at once) into StoreUnavailable.
        store_backend = Backend(
            prefix,
            lambda config: RedisStore.from_url(
                url, config, socket_timeout=5.0, socket_connect_timeout=5.0
            ),
        )
    try:
        yield store_backend
    finally:
        await store_backend.close()
        if request.param == "redis":
            await _delete_keys(request.getfixturevalue("real_redis_url"), prefix)


async def _delete_keys(url: str, prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        found = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if found:
            await client.delete(*found)
    finally:
        await client.aclose()


async def _acquire_many(store: LimiterStore, count: int, max_wait: float = 60.0) -> list[Admission]:
    return [await store.acquire(POOL, f"lease{i}", max_wait, LEASE_TTL) for i in range(count)]


def _send_time(admission: Admission) -> float:
    return admission.now + admission.wait


async def _window_totals(
    store: LimiterStore, admissions: Sequence[Admission], field: str
) -> dict[int, int]:
    windows = {store.config.window_of(a.now) for a in admissions}
    return {w: (await store.read_window(POOL, w)).get(field, 0) for w in sorted(windows)}


async def test_grants_at_the_rate_with_the_burst_then_waits_grow_by_one_interval_per_acquire(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=10.0, burst_seconds=0.25)
    admissions = await _acquire_many(store, 8)
    first = admissions[0]
    assert all(a.granted and a.reason == "ok" and a.rate == 10.0 for a in admissions)
    # The k-th slot is at first.now + k/rate; the burst lets it go 0.25 s early.
    for k, admission in enumerate(admissions):
        expected = max(0.0, first.now + k * 0.1 - 0.25 - admission.now)
        assert admission.wait == pytest.approx(expected, abs=EXACT)
    assert [a.wait for a in admissions[:3]] == [0.0, 0.0, 0.0]
    sends = [_send_time(a) for a in admissions[3:]]
    assert [b - a for a, b in itertools.pairwise(sends)] == pytest.approx([0.1] * 4, abs=EXACT)


async def test_a_wait_beyond_max_wait_reserves_neither_a_slot_nor_a_lease(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0, initial_concurrency=3)
    first, _ = await _acquire_many(store, 2, max_wait=5.0)
    refused = await store.acquire(POOL, "impatient", 0.5, LEASE_TTL)
    after = await store.acquire(POOL, "patient", 5.0, LEASE_TTL)

    assert (refused.granted, refused.reason) == (False, "rate")
    assert refused.wait == pytest.approx(first.now + 2.0 - refused.now, abs=EXACT)
    # Had the refusal reserved a slot, the next caller would wait one interval longer.
    assert after.granted
    assert _send_time(after) == pytest.approx(first.now + 2.0, abs=EXACT)
    # Had it taken a lease, the cap of three would be full after three grants.
    assert (await store.acquire(POOL, "fourth", 60.0, LEASE_TTL)).reason == "concurrency"


async def test_demand_counts_every_call_with_demand_true_refusals_included(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0, initial_concurrency=2)
    admissions = [
        await store.acquire(POOL, "a", 10.0, LEASE_TTL),  # granted
        await store.acquire(POOL, "b", 0.0, LEASE_TTL),  # refused: rate
        await store.acquire(POOL, "c", 10.0, LEASE_TTL),  # granted: the cap is full now
        await store.acquire(POOL, "d", 10.0, LEASE_TTL),  # refused: concurrency
        await store.acquire(POOL, "d", 10.0, LEASE_TTL, demand=False),  # d's retry
    ]
    assert [a.reason for a in admissions] == ["ok", "rate", "ok", "concurrency", "concurrency"]
    assert sum((await _window_totals(store, admissions, "demand")).values()) == 4


async def test_the_concurrency_cap_refuses_one_lease_too_many_and_a_release_frees_a_slot(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1000.0, initial_concurrency=2)
    await _acquire_many(store, 2)
    refused = await store.acquire(POOL, "third", 60.0, LEASE_TTL)
    assert (refused.granted, refused.reason, refused.concurrency) == (False, "concurrency", 2)
    assert 0 < refused.wait <= CONCURRENCY_RETRY_SECONDS

    await store.report(POOL, store.config.window_of(refused.now), {}, release=["lease0"])
    assert (await store.acquire(POOL, "third", 60.0, LEASE_TTL, demand=False)).granted


async def test_an_expired_lease_frees_its_slot_by_itself(backend: Backend) -> None:
    store = await backend.open(initial_rate=1000.0, initial_concurrency=1)
    held = await store.acquire(POOL, "crashed", 60.0, 0.15)
    refused = await store.acquire(POOL, "next", 60.0, LEASE_TTL)
    assert held.granted and refused.reason == "concurrency"
    # The suggested wait never outlasts the lease that will free the slot.
    assert refused.wait <= 0.15

    await asyncio.sleep(0.2)
    assert (await store.acquire(POOL, "next", 60.0, LEASE_TTL, demand=False)).granted


async def test_renewed_leases_outlive_their_ttl_and_released_or_expired_ones_stay_gone(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1000.0, initial_concurrency=3)
    for lease in ("running", "released", "crashed"):
        assert (await store.acquire(POOL, lease, 60.0, 0.5)).granted
    await store.report(POOL, 0, {}, release=["released"])
    assert await store.renew(POOL, ["running", "released"], 5.0) == 1
    await asyncio.sleep(0.7)
    # "crashed" was never renewed and has expired by itself; a renewal cannot bring it
    # back, and "running" still holds its slot.
    assert await store.renew(POOL, ["running", "crashed"], 5.0) == 1
    assert (await store.acquire(POOL, "second", 60.0, LEASE_TTL, demand=False)).granted
    assert (await store.acquire(POOL, "third", 60.0, LEASE_TTL, demand=False)).granted
    refused = await store.acquire(POOL, "fourth", 60.0, LEASE_TTL, demand=False)
    assert refused.reason == "concurrency"
    assert await store.renew(POOL, [], 0.3) == 0


async def test_peak_concurrency_is_recorded_per_window(backend: Backend) -> None:
    store = await backend.open(initial_rate=1000.0, window_seconds=0.2, window_ttl_seconds=5.0)
    config = store.config
    admissions = await _acquire_many(store, 3)
    expected = {config.window_of(a.now): 0 for a in admissions}
    for in_flight, admission in enumerate(admissions, start=1):
        window = config.window_of(admission.now)
        expected[window] = max(expected[window], in_flight)
    await store.report(POOL, 0, {}, release=["lease0", "lease1"])
    # Into the next window, then one more lease beside the one still held.
    await asyncio.sleep((config.window_of(admissions[-1].now) + 1) * 0.2 - admissions[-1].now)
    later = await store.acquire(POOL, "later", 60.0, LEASE_TTL)
    expected[config.window_of(later.now)] = 2

    assert len(expected) >= 2
    assert await _window_totals(store, [*admissions, later], "peak_concurrency") == expected


async def test_report_adds_counts_to_the_right_window_and_read_window_returns_ints(
    backend: Backend,
) -> None:
    store = await backend.open()
    window = store.config.window_of(await store.now())
    await store.report(POOL, window, {"ok": 3, "rate_frequency": 1, "network": 0})
    await store.report(POOL, window, {"ok": 2})
    await store.report(POOL, window + 1, {"server_error": 1})

    counts = await store.read_window(POOL, window)
    # Zero counts are not written: a missing field reads as zero.
    assert counts == {"ok": 5, "rate_frequency": 1}
    assert all(type(value) is int for value in counts.values())
    assert await store.read_window(POOL, window + 1) == {"server_error": 1}
    assert await store.read_window(POOL, window + 2) == {}
    assert await store.read_window("other", window) == {}
    assert Window.from_counts(counts) == Window(ok=5, rate_frequency=1)


async def test_save_state_changes_the_rate_and_cap_the_next_acquire_uses(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=5.0, burst_seconds=0.0, initial_concurrency=256)
    before = await store.acquire(POOL, "a", 60.0, LEASE_TTL)
    assert (before.rate, before.concurrency) == (5.0, 256)

    await store.save_state(POOL, {"rate": "1", "concurrency": "7.9", "ceiling": "1.2"})
    slow = [await store.acquire(POOL, f"b{i}", 60.0, LEASE_TTL) for i in range(2)]
    assert [(a.rate, a.concurrency) for a in slow] == [(1.0, 7), (1.0, 7)]
    # The slot reserved at the old rate stands; from there on slots are 1 s apart.
    assert _send_time(slow[0]) == pytest.approx(before.now + 0.2, abs=EXACT)
    assert _send_time(slow[1]) - _send_time(slow[0]) == pytest.approx(1.0, abs=EXACT)


@pytest.mark.parametrize("burst", [0.0, 0.25])
@pytest.mark.parametrize("new_rate", [0.5, 4.0])
async def test_a_rate_change_rescales_the_waiting_backlog_by_old_rate_over_new_rate(
    backend: Backend, new_rate: float, burst: float
) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=burst)
    backlog = await _acquire_many(store, 4)  # the last one is sent ~3 s from now
    last = _send_time(backlog[-1])

    await store.save_state(POOL, {"rate": repr(new_rate), "concurrency": "256"})
    first, second = await _acquire_many(store, 2)
    assert (first.granted, first.rate) == (True, new_rate)
    # What was left of the backlog stretches (or shrinks) by 1 / new_rate; the next slot
    # follows it one new interval later, not one old interval after the old last send.
    rescaled_last = first.now + (last - first.now) * 1.0 / new_rate
    assert _send_time(first) == pytest.approx(rescaled_last + 1 / new_rate, abs=EXACT)
    assert _send_time(second) - _send_time(first) == pytest.approx(1 / new_rate, abs=EXACT)


async def test_a_rescaled_backlog_ends_at_most_max_wait_ahead(backend: Backend) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0)
    await _acquire_many(store, 4)  # the last one is sent ~3 s from now, 30 s at 0.1 rps
    await store.save_state(POOL, {"rate": "0.1", "concurrency": "256"})

    refused = await store.acquire(POOL, "impatient", 5.0, LEASE_TTL)
    assert (refused.granted, refused.reason) == (False, "rate")
    # The backlog was cut at the caller's max wait, 5 s; its next slot is 10 s after that.
    assert refused.wait == pytest.approx(5.0 + 10.0, abs=EXACT)
    patient = await store.acquire(POOL, "patient", 60.0, LEASE_TTL)
    assert _send_time(patient) == pytest.approx(refused.now + 5.0 + 10.0, abs=EXACT)


@pytest.mark.parametrize("saved", ["0", "-1", "nan", "inf", "fast"])
async def test_a_saved_rate_that_is_not_a_positive_number_falls_back_to_the_initial_rate(
    backend: Backend, saved: str
) -> None:
    store = await backend.open(initial_rate=5.0, initial_concurrency=9)
    await store.save_state(POOL, {"rate": saved, "concurrency": "nan"})
    admission = await store.acquire(POOL, "a", 60.0, LEASE_TTL)
    assert (admission.granted, admission.rate, admission.concurrency) == (True, 5.0, 9)


async def test_load_state_round_trips_and_a_save_replaces_the_whole_state(
    backend: Backend,
) -> None:
    store = await backend.open()
    assert await store.load_state(POOL) is None
    state = {"rate": "2.5", "concurrency": "12.0", "ceiling": "3.125", "probing": "false"}
    await store.save_state(POOL, state)
    assert await store.load_state(POOL) == state

    await store.save_state(POOL, {"rate": "2.0", "concurrency": "12.0"})
    assert await store.load_state(POOL) == {"rate": "2.0", "concurrency": "12.0"}
    await store.save_state(POOL, {})
    assert await store.load_state(POOL) is None


async def test_reset_forgets_state_reservations_and_leases(backend: Backend) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0, initial_concurrency=1)
    await store.acquire(POOL, "held", 60.0, LEASE_TTL)
    await store.save_state(POOL, {"rate": "0.5", "concurrency": "1"})

    await store.reset(POOL)
    assert await store.load_state(POOL) is None
    fresh = await store.acquire(POOL, "fresh", 60.0, LEASE_TTL)
    assert (fresh.granted, fresh.wait, fresh.rate) == (True, 0.0, 1.0)


async def test_heartbeat_counts_live_replicas_and_forgets_expired_ones(
    backend: Backend,
) -> None:
    store = await backend.open()
    # TTLs leave room for a stalled event loop on a loaded 2-core machine.
    assert await store.heartbeat(POOL, "short", 1.0) == 1
    assert await store.heartbeat(POOL, "long", 10.0) == 2
    assert await store.heartbeat(POOL, "short", 1.0) == 2  # a renewal is not a new replica
    assert await store.replicas(POOL) == 2
    assert await store.replicas("other") == 0

    await asyncio.sleep(1.1)
    assert await store.replicas(POOL) == 1
    assert await store.heartbeat(POOL, "new", 10.0) == 2


async def test_one_of_two_nodes_leads_renewals_keep_it_and_the_other_takes_over_after_the_ttl(
    backend: Backend,
) -> None:
    first, second = await backend.open(), await backend.open()
    assert await first.lead("node-a", 1.0)
    assert not await second.lead("node-b", 1.0)
    for _ in range(4):  # 1.2 s in all, past the TTL: only the renewals keep the lease
        await asyncio.sleep(0.3)
        assert await first.lead("node-a", 1.0)
        assert not await second.lead("node-b", 1.0)

    await asyncio.sleep(1.1)
    assert await second.lead("node-b", 1.0)
    assert not await first.lead("node-a", 1.0)


async def test_pools_lists_the_pools_with_a_recent_acquire(backend: Backend) -> None:
    store = await backend.open(window_seconds=0.1, window_ttl_seconds=0.3)
    assert await store.pools() == []
    for pool in ("b", "a"):
        await store.acquire(pool, "lease", 60.0, LEASE_TTL)
    assert sorted(await store.pools()) == ["a", "b"]

    await asyncio.sleep(0.4)
    await store.acquire("c", "lease", 60.0, LEASE_TTL)
    assert await store.pools() == ["c"]


async def test_two_stores_on_one_backend_share_everything(backend: Backend) -> None:
    config = {"initial_rate": 1.0, "burst_seconds": 0.0, "initial_concurrency": 1}
    one, two = await backend.open(**config), await backend.open(**config)

    first = await one.acquire(POOL, "one", 60.0, LEASE_TTL)
    crowded = await two.acquire(POOL, "two", 60.0, LEASE_TTL)
    assert first.granted and crowded.reason == "concurrency"
    await one.report(POOL, one.config.window_of(first.now), {"ok": 1}, release=["one"])
    second = await two.acquire(POOL, "two", 60.0, LEASE_TTL, demand=False)
    assert _send_time(second) == pytest.approx(first.now + 1.0, abs=EXACT)

    window = one.config.window_of(first.now)
    assert (await two.read_window(POOL, window))["ok"] == 1
    await two.save_state(POOL, {"rate": "3"})
    assert await one.load_state(POOL) == {"rate": "3"}
    await one.heartbeat(POOL, "proxy-1", 5.0)
    assert await two.heartbeat(POOL, "proxy-2", 5.0) == 2
    assert await two.pools() == [POOL]


async def test_concurrent_acquires_from_two_stores_get_distinct_slots_one_interval_apart(
    backend: Backend,
) -> None:
    config = {"initial_rate": 50.0, "burst_seconds": 0.25, "initial_concurrency": 1000}
    one, two = await backend.open(**config), await backend.open(**config)
    admissions = await asyncio.gather(
        *((one if i % 2 else two).acquire(POOL, f"lease{i}", 10.0, LEASE_TTL) for i in range(200))
    )
    assert all(a.granted for a in admissions)
    waiting = sorted(_send_time(a) for a in admissions if a.wait > 0)
    gaps = [b - a for a, b in itertools.pairwise(waiting)]
    assert gaps == pytest.approx([0.02] * len(gaps), abs=EXACT)
    # Only the burst (and whatever time passed while the calls ran) goes without a wait.
    elapsed = max(a.now for a in admissions) - min(a.now for a in admissions)
    assert 200 - len(waiting) <= 0.25 / 0.02 + 1 + elapsed / 0.02
    assert sum((await _window_totals(one, admissions, "demand")).values()) == 200


# Behaviour of the adapters themselves, outside the shared contract.


def test_open_store_picks_redis_for_a_url_and_memory_without_one() -> None:
    config = StoreConfig()
    assert isinstance(open_store(None, config, socket_timeout=0.1), MemoryStore)
    assert isinstance(open_store("redis://127.0.0.1:6379/0", config), RedisStore)


async def test_an_unreachable_redis_raises_store_unavailable_from_every_call() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:1/0", StoreConfig())
    calls: list[Callable[[], Awaitable[object]]] = [
        store.ping,
        store.now,
        lambda: store.acquire(POOL, "a", 1.0, LEASE_TTL),
        lambda: store.report(POOL, 0, {"ok": 1}),
        lambda: store.heartbeat(POOL, "r", 1.0),
        store.pools,
        lambda: store.read_window(POOL, 0),
        lambda: store.load_state(POOL),
        lambda: store.save_state(POOL, {"rate": "1"}),
        lambda: store.replicas(POOL),
        lambda: store.reset(POOL),
        lambda: store.lead("node", 1.0),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call()
    await store.close()


async def test_a_redis_that_stops_answering_raises_store_unavailable_within_the_timeout() -> None:
    async def accept_and_stay_silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", StoreConfig(), socket_timeout=0.1)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreUnavailable):
            await store.acquire(POOL, "a", 1.0, LEASE_TTL)
        assert loop.time() - started < 1.0
    finally:
        await store.close()
        server.close()


def test_every_key_of_a_pool_hashes_to_one_cluster_slot() -> None:
    pool_keys = keys.pool_keys("zaiproxy", "glm-4.6:key-1")
    names = [pool_keys.state, pool_keys.tat, pool_keys.leases, pool_keys.replicas]
    names += [pool_keys.window(index) for index in (0, 359_150_172)]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert key_slot(names[0].encode()) == key_slot(b"glm-4.6:key-1")


async def test_other_redis_errors_raise_store_error_but_not_unavailable() -> None:
    client = fakeredis.FakeAsyncRedis()
    store = RedisStore(client, StoreConfig())
    await client.set(keys.pool_keys(store.config.prefix, POOL).state, "not a hash")
    with pytest.raises(StoreError) as raised:
        await store.load_state(POOL)
    assert not isinstance(raised.value, StoreUnavailable)
    assert isinstance(raised.value.__cause__, redis.exceptions.ResponseError)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_the_memory_store_forgets_expired_windows_leases_and_replicas() -> None:
    clock = _Clock()
    store = MemoryStore(StoreConfig(window_seconds=1.0, window_ttl_seconds=2.0), clock=clock)
    for i in range(50):
        await store.acquire("old", f"lease{i}", 60.0, 1.0)
        await store.heartbeat("old", f"replica{i}", 1.0)
        await store.report("old", i, {"ok": 1})
        clock.now += 0.01
    assert store.footprint > 100

    clock.now += 10.0
    await store.acquire("new", "lease", 60.0, 1.0)
    assert store.footprint == 3  # the new pool, its window and its lease
    assert await store.pools() == ["new"]


async def test_bounds_are_kept_apart_from_the_state_and_survive_a_reset(backend: Backend) -> None:
    store = await backend.open()
    assert await store.load_bounds(POOL) == {}
    await store.save_bounds(POOL, {"min_rate": "2.0", "max_rate": "5.0"})
    await store.save_state(POOL, {"rate": "4.0"})  # a step replaces the state, not the bounds
    assert await store.load_bounds(POOL) == {"min_rate": "2.0", "max_rate": "5.0"}
    await store.reset(POOL)
    assert await store.load_state(POOL) is None
    assert await store.load_bounds(POOL) == {"min_rate": "2.0", "max_rate": "5.0"}
    await store.save_bounds(POOL, {})
    assert await store.load_bounds(POOL) == {}
