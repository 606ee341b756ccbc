"""The limiter store contract, run against the in-memory store, fakeredis and a real Redis.

Every contract test gets a ``backend`` that opens stores sharing one state: on Redis each
``open`` is a new client (another proxy), in memory it is the one store of the process.
Times come from the stores' own clocks (``Admission.now``), so expected waits are exact;
TTLs are a few hundred milliseconds so that the file stays fast on a real Redis. A pool's
cap and rate come from its saved state (``save_state``, compare-and-set on ``version``),
as the control loop writes them; without one, the rate is ``initial_rate`` and there is
no cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import fakeredis
import pytest
import redis.asyncio
from redis.crc import key_slot

from zai_proxy.limiter import keys
from zai_proxy.limiter.memory_store import MemoryStore
from zai_proxy.limiter.redis_store import RedisStore
from zai_proxy.limiter.store import (
    ALL_SLOTS,
    CONCURRENCY_RETRY_SECONDS,
    FOREVER,
    Admission,
    LimiterStore,
    StoreConfig,
    StoreError,
    StoreUnavailable,
    parse_cap,
    parse_rate,
    pushed_cap,
    state_version,
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


async def _save(store: LimiterStore, pool: str = POOL, **fields: str) -> dict[str, str]:
    """Replace a pool's state as the control loop does (load, then compare-and-set)."""
    version = state_version(await store.load_state(pool))
    assert await store.save_state(pool, fields, version)
    saved = await store.load_state(pool)
    assert saved is not None
    return saved


async def _tick(store: LimiterStore) -> int:
    return store.config.tick_of(await store.now())


# --- acquire: the rate ---------------------------------------------------------------------


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


async def test_an_unlimited_rate_and_no_cap_admit_everything_at_once(backend: Backend) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0)
    await _save(store, rate="inf", concurrency="")
    admissions = await _acquire_many(store, 300, max_wait=0.0)

    assert all(a.granted and a.reason == "ok" and a.wait == 0.0 for a in admissions)
    assert {(a.rate, a.concurrency) for a in admissions} == {(math.inf, None)}
    # Every lease is held (and counted), though nothing caps them.
    assert [a.in_flight for a in admissions] == list(range(1, 301))


async def test_a_pool_without_saved_state_runs_at_the_initial_rate_without_a_cap(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=2.0, burst_seconds=0.0)
    first, second = await _acquire_many(store, 2)
    assert (first.rate, first.concurrency, first.epoch) == (2.0, None, 0)
    assert first.wait == 0.0
    assert second.wait == pytest.approx(0.5 - (second.now - first.now), abs=EXACT)


async def test_gcra_waits_at_a_saved_rate_and_leaves_no_backlog_once_it_is_unlimited(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=50.0, burst_seconds=0.0)
    await _save(store, rate="2.0", concurrency="")
    admissions = await _acquire_many(store, 4)
    assert all(a.granted and a.rate == 2.0 for a in admissions)
    sends = [_send_time(a) for a in admissions]
    assert [b - a for a, b in itertools.pairwise(sends)] == pytest.approx([0.5] * 3, abs=EXACT)

    # Unlimited, nothing waits; and the slots laid out before are gone, so a rate saved
    # afterwards starts from an empty bucket, not behind the old backlog.
    await _save(store, rate="inf", concurrency="")
    assert (await store.acquire(POOL, "open", 0.0, LEASE_TTL)).wait == 0.0
    await _save(store, rate="2.0", concurrency="")
    after = await store.acquire(POOL, "after", 0.0, LEASE_TTL)
    assert (after.granted, after.wait, after.rate) == (True, 0.0, 2.0)


async def test_a_wait_beyond_max_wait_reserves_neither_a_slot_nor_a_lease(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0)
    await _save(store, rate="1.0", concurrency="3")
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


async def test_save_state_changes_the_rate_and_cap_the_next_acquire_uses(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=5.0, burst_seconds=0.0)
    await _save(store, rate="5.0", concurrency="256", epoch="3")
    before = await store.acquire(POOL, "a", 60.0, LEASE_TTL)
    assert (before.rate, before.concurrency, before.epoch) == (5.0, 256, 3)

    await _save(store, rate="1", concurrency="7.9", epoch="4", limit="1.2")
    slow = [await store.acquire(POOL, f"b{i}", 60.0, LEASE_TTL) for i in range(2)]
    assert [(a.rate, a.concurrency, a.epoch) for a in slow] == [(1.0, 7, 4), (1.0, 7, 4)]
    # Nothing was waiting, so nothing is rescaled: the slot reserved at the old rate
    # stands, and from there on slots are 1 s apart.
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

    await _save(store, rate=repr(new_rate), concurrency="")
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
    await _save(store, rate="0.1", concurrency="")

    refused = await store.acquire(POOL, "impatient", 5.0, LEASE_TTL)
    assert (refused.granted, refused.reason) == (False, "rate")
    # The backlog was cut at the caller's max wait, 5 s; its next slot is 10 s after that.
    assert refused.wait == pytest.approx(5.0 + 10.0, abs=EXACT)
    patient = await store.acquire(POOL, "patient", 60.0, LEASE_TTL)
    assert _send_time(patient) == pytest.approx(refused.now + 5.0 + 10.0, abs=EXACT)


async def test_a_concurrency_refusal_rescales_the_backlog_too(backend: Backend) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0)
    await _save(store, rate="1.0", concurrency="3")
    backlog = await _acquire_many(store, 3)  # the cap is full; the last is sent ~2 s ahead
    await _save(store, rate="2.0", concurrency="3")

    refused = await store.acquire(POOL, "capped", 60.0, LEASE_TTL)
    assert (refused.granted, refused.reason) == (False, "concurrency")
    await store.report(POOL, {}, release=["lease0"])
    granted = await store.acquire(POOL, "next", 60.0, LEASE_TTL)
    # The refusal moved the backlog to the new rate: the next slot is half an interval
    # after the rescaled last send, not one old interval after the old one.
    rescaled_last = refused.now + (_send_time(backlog[-1]) - refused.now) / 2.0
    assert _send_time(granted) == pytest.approx(rescaled_last + 0.5, abs=EXACT)


@pytest.mark.parametrize("saved", ["0", "-1", "nan", "-inf", "fast", "", "1e400", "Infinity"])
async def test_a_saved_rate_that_is_not_inf_or_a_positive_number_falls_back_to_the_initial_rate(
    backend: Backend, saved: str
) -> None:
    store = await backend.open(initial_rate=5.0)
    await _save(store, rate=saved, concurrency="nan")
    admission = await store.acquire(POOL, "a", 60.0, LEASE_TTL)
    assert (admission.granted, admission.rate, admission.concurrency) == (True, 5.0, None)


@pytest.mark.parametrize(("saved", "cap"), [("7.9", 7), ("0", 1), ("-3", 1), ("inf", None)])
async def test_a_saved_cap_is_a_whole_number_of_at_least_one(
    backend: Backend, saved: str, cap: int | None
) -> None:
    store = await backend.open(initial_rate=1000.0)
    await _save(store, rate="1000", concurrency=saved)
    assert (await store.acquire(POOL, "a", 60.0, LEASE_TTL)).concurrency == cap


# --- acquire: the cap and leases -----------------------------------------------------------


async def test_the_concurrency_cap_refuses_one_lease_too_many_and_a_release_frees_a_slot(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1000.0)
    await _save(store, rate="1000", concurrency="2", epoch="5")
    granted = await _acquire_many(store, 2)
    assert [(a.in_flight, a.epoch) for a in granted] == [(1, 5), (2, 5)]
    refused = await store.acquire(POOL, "third", 60.0, LEASE_TTL)
    assert (refused.granted, refused.reason, refused.concurrency) == (False, "concurrency", 2)
    assert (refused.in_flight, refused.epoch) == (2, 5)
    assert 0 < refused.wait <= CONCURRENCY_RETRY_SECONDS

    await store.report(POOL, {}, release=["lease0"])
    third = await store.acquire(POOL, "third", 60.0, LEASE_TTL)
    assert (third.granted, third.in_flight) == (True, 2)
    # Releasing a lease that is already gone frees nothing more.
    await store.report(POOL, {}, release=["lease0"])
    assert (await store.acquire(POOL, "fourth", 60.0, LEASE_TTL)).reason == "concurrency"


async def test_an_expired_lease_frees_its_slot_by_itself(backend: Backend) -> None:
    store = await backend.open(initial_rate=1000.0)
    await _save(store, rate="1000", concurrency="1")
    held = await store.acquire(POOL, "crashed", 60.0, 0.15)
    refused = await store.acquire(POOL, "next", 60.0, LEASE_TTL)
    assert held.granted and refused.reason == "concurrency"
    # The suggested wait never outlasts the lease that will free the slot.
    assert refused.wait <= 0.15

    await asyncio.sleep(0.2)
    assert (await store.acquire(POOL, "next", 60.0, LEASE_TTL)).granted


async def test_renewed_leases_outlive_their_ttl_and_released_or_expired_ones_stay_gone(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1000.0)
    await _save(store, rate="1000", concurrency="3")
    for lease in ("running", "released", "crashed"):
        assert (await store.acquire(POOL, lease, 60.0, 0.5)).granted
    await store.report(POOL, {}, release=["released"])
    assert await store.renew(POOL, ["running", "released"], 5.0) == 1
    await asyncio.sleep(0.7)
    # "crashed" was never renewed and has expired by itself; a renewal cannot bring it
    # back, and "running" still holds its slot.
    assert await store.renew(POOL, ["running", "crashed"], 5.0) == 1
    assert (await store.acquire(POOL, "second", 60.0, LEASE_TTL)).granted
    third = await store.acquire(POOL, "third", 60.0, LEASE_TTL)
    assert (third.granted, third.in_flight) == (True, 3)
    refused = await store.acquire(POOL, "fourth", 60.0, LEASE_TTL)
    assert refused.reason == "concurrency"
    assert await store.renew(POOL, [], 0.3) == 0
    assert await store.renew("other", ["running"], 0.3) == 0


# --- report and read_ticks -----------------------------------------------------------------


async def test_report_sums_tick_counts_and_keeps_the_extremes(backend: Backend) -> None:
    store = await backend.open()
    tick = await _tick(store)
    await store.report(
        POOL,
        {tick: {"ok": 3, "sent": 4, "network": 0, "ok_at": 4, "latency_sum": 0.25}},
    )
    await store.report(
        POOL,
        {
            tick: {"ok": 2, "ok_at": 7, "refused_at": 5, "latency_sum": 0.5, "latency_count": 2},
            tick + 1: {"server_error": 1, "refused_at": 9},
        },
    )
    await store.report(POOL, {tick: {"ok_at": 2, "refused_at": 6, "latency_sum": 0.125}})

    counts = await store.read_ticks(POOL, tick, tick + 1)
    # Counts add up; ok_at keeps the highest, refused_at the lowest; latency_sum adds
    # seconds as floats; a zero count is not written (a missing field reads as zero).
    assert counts == {
        tick: {
            "ok": 5,
            "sent": 4,
            "ok_at": 7,
            "refused_at": 5,
            "latency_sum": pytest.approx(0.875, abs=1e-12),
            "latency_count": 2,
        },
        tick + 1: {"server_error": 1, "refused_at": 9},
    }


async def test_read_ticks_returns_only_ticks_with_counts_in_its_range(backend: Backend) -> None:
    store = await backend.open()
    tick = await _tick(store)
    await store.report(POOL, {tick: {"ok": 1}, tick + 2: {"sent": 2}, tick + 3: {"network": 0}})
    await store.report("other", {tick + 1: {"ok": 9}})

    assert await store.read_ticks(POOL, tick - 5, tick + 5) == {
        tick: {"ok": 1},
        tick + 2: {"sent": 2},
    }
    assert await store.read_ticks(POOL, tick + 1, tick + 2) == {tick + 2: {"sent": 2}}
    assert await store.read_ticks(POOL, tick + 3, tick + 9) == {}  # only a zero count
    assert await store.read_ticks(POOL, tick + 2, tick) == {}  # an empty range
    assert await store.read_ticks("unknown", tick, tick + 5) == {}


async def test_tick_counts_expire_after_the_tick_ttl(backend: Backend) -> None:
    store = await backend.open(tick_seconds=0.01, tick_ttl_seconds=0.1)
    tick = await _tick(store)
    await store.report(POOL, {tick: {"ok": 1}})
    assert await store.read_ticks(POOL, tick, tick) == {tick: {"ok": 1}}
    await asyncio.sleep(0.2)
    assert await store.read_ticks(POOL, tick, tick) == {}


# --- the push ------------------------------------------------------------------------------


async def test_a_frequency_429_during_a_rate_probe_puts_the_probe_base_in_force_at_once(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=5.0, burst_seconds=0.0)
    saved = await _save(store, rate="30.0", probe_base="20.0", concurrency="", law="{}")
    before = await store.now()
    await store.report(POOL, {await _tick(store): {"sent": 4, "ok": 3, "rate_frequency": 1}})
    after = await store.now()

    pushed = await store.load_state(POOL)
    assert pushed is not None
    assert (pushed["rate"], pushed["probe_base"]) == ("20.0", "")
    assert before <= float(pushed["pushed_rate"]) <= after
    assert state_version(pushed) == state_version(saved) + 1
    # The rest of the state is the law's: the push leaves it alone.
    assert (pushed["law"], pushed["concurrency"]) == ("{}", "")
    assert (await store.acquire(POOL, "retry", 60.0, LEASE_TTL)).rate == 20.0

    # The probe is over: another 429 pushes nothing more.
    await store.report(POOL, {await _tick(store): {"rate_frequency": 2}})
    assert await store.load_state(POOL) == pushed


@pytest.mark.parametrize(
    ("state", "counts"),
    [
        # not probing
        ({"rate": "30.0", "probe_base": ""}, {"rate_frequency": 3}),
        ({"rate": "30.0"}, {"rate_frequency": 3}),
        # probing, but no frequency 429: ok answers, other classes of 429, zero counts
        ({"rate": "30.0", "probe_base": "20.0"}, {"ok": 5, "sent": 5}),
        ({"rate": "30.0", "probe_base": "20.0"}, {"rate_quota": 1, "rate_congestion": 1}),
        ({"rate": "30.0", "probe_base": "20.0"}, {"rate_frequency": 0}),
        # a 1302 under no cap probe and no exact evidence
        ({"rate": "30.0", "concurrency": "4", "cap_base": ""}, {"rate_concurrency": 1}),
    ],
)
async def test_answers_that_end_no_probe_and_lower_no_cap_push_nothing(
    backend: Backend, state: dict[str, str], counts: dict[str, float]
) -> None:
    store = await backend.open()
    saved = await _save(store, **state)
    await store.report(POOL, {await _tick(store): counts})
    assert await store.load_state(POOL) == saved


async def test_a_rate_429_for_a_pool_without_saved_state_creates_none(backend: Backend) -> None:
    store = await backend.open(initial_rate=5.0)
    await store.report(POOL, {await _tick(store): {"rate_frequency": 1, "rate_concurrency": 1}})
    assert await store.load_state(POOL) is None
    admission = await store.acquire(POOL, "a", 60.0, LEASE_TTL)
    assert (admission.rate, admission.concurrency) == (5.0, None)


async def test_the_first_1302_of_a_pool_without_saved_state_caps_it_at_once(
    backend: Backend,
) -> None:
    # A new pool, before the law's first step: its 1302s' retries meet the cap at once.
    store = await backend.open(initial_rate=5.0)
    await store.report(POOL, {await _tick(store): {"rate_concurrency": 1, "refused_at": 3}})
    saved = await store.load_state(POOL)
    assert saved is not None
    assert (saved["concurrency"], saved["epoch"], saved["version"]) == ("2", "1", "1")
    assert float(saved["pushed_cap"]) == pytest.approx(await store.now(), abs=2.0)
    admission = await store.acquire(POOL, "a", 60.0, LEASE_TTL)
    assert (admission.rate, admission.concurrency, admission.epoch) == (5.0, 2, 1)
    # The law's first step loads it as any state (compare-and-set on its version).
    assert await store.save_state(POOL, {"concurrency": "2", "epoch": "1"}, 1)


async def test_a_1302_under_a_cap_in_force_leaves_the_cap_to_the_law(
    backend: Backend,
) -> None:
    # Lowering a cap weighs evidence the store does not have (answers ok at higher counts
    # a moment ago: the counts crossed at the limit), so the push leaves it alone.
    store = await backend.open(initial_rate=1000.0)
    saved = await _save(store, rate="1000", concurrency="8", epoch="3", cap_floor="2")
    await store.report(POOL, {await _tick(store): {"rate_concurrency": 1, "refused_at": 6}})
    assert await store.load_state(POOL) == saved
    admission = await store.acquire(POOL, "a", 60.0, LEASE_TTL)
    assert (admission.concurrency, admission.epoch) == (8, 3)


async def test_the_first_1302_caps_an_uncapped_pool_never_below_the_floor(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1000.0)
    saved = await _save(store, rate="inf", concurrency="", epoch="3", cap_floor="2")
    before = await store.now()
    tick = await _tick(store)
    # The lowest count of the batch counts.
    await store.report(
        POOL, {tick: {"rate_concurrency": 1, "refused_at": 6}, tick + 1: {"refused_at": 5}}
    )
    after = await store.now()
    capped = await store.load_state(POOL)
    assert capped is not None
    assert (capped["concurrency"], capped["epoch"]) == ("4", "4")
    assert before <= float(capped["pushed_cap"]) <= after
    assert state_version(capped) == state_version(saved) + 1
    assert (await store.acquire(POOL, "a", 60.0, LEASE_TTL)).concurrency == 4

    floored = await _save(store, rate="inf", concurrency="", epoch="0", cap_floor="2")
    await store.report(POOL, {await _tick(store): {"rate_concurrency": 1, "refused_at": 1}})
    lowest = await store.load_state(POOL)
    assert lowest is not None and lowest["concurrency"] == "2"
    assert state_version(lowest) == state_version(floored) + 1


async def test_a_1302_without_a_cap_sets_one_below_the_count_it_came_at(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1000.0)
    await _save(store, rate="inf", concurrency="", epoch="0")
    await store.report(POOL, {await _tick(store): {"rate_concurrency": 2, "refused_at": 10}})
    capped = await store.load_state(POOL)
    assert capped is not None
    # No cap_floor saved: the floor is one.
    assert (capped["concurrency"], capped["epoch"]) == ("9", "1")
    assert (await store.acquire(POOL, "a", 60.0, LEASE_TTL)).concurrency == 9


@pytest.mark.parametrize("refused_at", [None, 3, 40])
async def test_a_1302_during_a_cap_probe_puts_the_cap_base_back(
    backend: Backend, refused_at: int | None
) -> None:
    store = await backend.open(initial_rate=1000.0)
    saved = await _save(store, rate="1000", concurrency="12", cap_base="10", epoch="7")
    counts: dict[str, float] = {"rate_concurrency": 1, "ok": 3}
    if refused_at is not None:
        counts["refused_at"] = refused_at
    await store.report(POOL, {await _tick(store): counts})

    pushed = await store.load_state(POOL)
    assert pushed is not None
    # The probe's base, whatever count the 1302 came at: the probe is over.
    assert (pushed["concurrency"], pushed["cap_base"], pushed["epoch"]) == ("10", "", "8")
    assert "pushed_cap" in pushed
    assert state_version(pushed) == state_version(saved) + 1


async def test_a_429_and_a_1302_in_one_report_push_both_with_one_version(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1000.0)
    saved = await _save(
        store, rate="40.0", probe_base="30.0", concurrency="6", cap_base="5", epoch="1"
    )
    tick = await _tick(store)
    await store.report(
        POOL, {tick: {"rate_frequency": 1}, tick + 1: {"rate_concurrency": 1, "refused_at": 4}}
    )
    pushed = await store.load_state(POOL)
    assert pushed is not None
    assert (pushed["rate"], pushed["concurrency"], pushed["epoch"]) == ("30.0", "5", "2")
    assert state_version(pushed) == state_version(saved) + 1


@pytest.mark.parametrize(
    ("cap", "base", "refused_at", "floor", "pushed"),
    [
        (8, None, 6, 1, None),  # a cap in force is the law's to lower
        (8, None, 9, 1, None),
        (None, None, 5, 1, 4),  # no cap yet: one below the count the 1302 came at
        (None, None, 2, 3, 3),  # never below the floor
        (3, None, 2, 3, None),
        (8, None, None, 1, None),  # no exact evidence, no probe: nothing
        (12, 10, None, 1, 10),  # a probe's base
        (12, 10, 3, 1, 10),
    ],
)
def test_pushed_cap(
    cap: int | None, base: int | None, refused_at: int | None, floor: int, pushed: int | None
) -> None:
    assert pushed_cap(cap, base, refused_at, floor) == pushed


# --- save_state ----------------------------------------------------------------------------


async def test_load_state_round_trips_and_a_save_replaces_the_whole_state(
    backend: Backend,
) -> None:
    store = await backend.open()
    assert await store.load_state(POOL) is None
    state = {"rate": "2.5", "concurrency": "12", "limit": "3.125", "probing": ""}
    assert await store.save_state(POOL, state, 0)
    assert await store.load_state(POOL) == {**state, "version": "1"}

    # A version in the fields is the store's to set, not the caller's.
    assert await store.save_state(POOL, {"rate": "2.0", "version": "99"}, 1)
    assert await store.load_state(POOL) == {"rate": "2.0", "version": "2"}


async def test_save_state_is_compare_and_set_on_the_version(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    assert await one.save_state(POOL, {"rate": "3"}, 0)
    # Two steps loaded version 1: the first save wins, the second changes nothing.
    assert await two.save_state(POOL, {"rate": "4"}, 1)
    assert not await one.save_state(POOL, {"rate": "5"}, 1)
    assert not await one.save_state(POOL, {"rate": "5"}, 0)
    assert not await one.save_state(POOL, {"rate": "5"}, 3)
    assert await one.load_state(POOL) == {"rate": "4", "version": "2"}


async def test_a_push_between_load_and_save_makes_the_save_fail_and_is_kept(
    backend: Backend,
) -> None:
    store = await backend.open()
    await _save(store, rate="30.0", probe_base="20.0", concurrency="")
    loaded = await store.load_state(POOL)
    assert loaded is not None
    # A proxy reports the probe's first 429 while the control loop steps the pool.
    await store.report(POOL, {await _tick(store): {"rate_frequency": 1}})
    step = {**loaded, "rate": "33.0", "probe_base": "20.0"}

    assert not await store.save_state(POOL, step, state_version(loaded))
    kept = await store.load_state(POOL)
    assert kept is not None
    assert (kept["rate"], kept["probe_base"]) == ("20.0", "")
    # The next step loads the pushed state and saves over it.
    assert await store.save_state(POOL, {**kept, "rate": "19.6"}, state_version(kept))
    final = await store.load_state(POOL)
    assert final is not None and final["rate"] == "19.6"
    assert state_version(final) == state_version(loaded) + 2


class _Listener:
    """What a store's ``freed`` announces, heard by a task of its own."""

    def __init__(self, store: LimiterStore) -> None:
        self.heard: asyncio.Queue[int] = asyncio.Queue()
        self._task = asyncio.create_task(self._listen(store))

    async def _listen(self, store: LimiterStore) -> None:
        async for slots in store.freed(POOL):
            await self.heard.put(slots)

    async def next(self) -> int:
        return await asyncio.wait_for(self.heard.get(), 5.0)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _listening(backend: Backend, store: LimiterStore) -> _Listener:
    """A listener on another store of the backend, once it hears (a subscription is not
    in force the moment it is asked for): it is sent releases of a lease under a cap of
    one until one is heard."""
    listener = _Listener(await backend.open(initial_rate=1000.0))
    await _save(store, rate="1000", concurrency="1")
    async with asyncio.timeout(5.0):
        while True:
            assert (await store.acquire(POOL, "sync", 60.0, LEASE_TTL)).granted
            await store.report(POOL, {}, release=["sync"])
            with contextlib.suppress(TimeoutError):
                assert await asyncio.wait_for(listener.heard.get(), 0.05) == 1
                break
    while not listener.heard.empty():
        assert listener.heard.get_nowait() == 1
    return listener


async def test_freed_announces_released_slots_raised_and_lifted_caps_and_resets_to_every_store(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1000.0)
    listener = await _listening(backend, store)
    try:
        await _save(store, rate="1000", concurrency="3")
        assert await listener.next() == 2  # the cap rose from 1 to 3
        await _acquire_many(store, 3)
        await store.report(POOL, {}, release=["lease0", "lease1", "gone"])
        assert await listener.next() == 2  # two leases held, one never was
        await store.report(POOL, {}, release=["lease0"])  # already released: nothing
        await _save(store, rate="1000", concurrency="2")  # lowered: nothing
        await store.report(POOL, {}, release=["lease2"])
        assert await listener.next() == 1
        await _save(store, rate="1000", concurrency="")  # lifted: every waiter may go
        assert await listener.next() == ALL_SLOTS
        held = await store.acquire(POOL, "uncapped", 60.0, LEASE_TTL)
        await store.report(POOL, {}, release=["uncapped"])  # no cap: nobody waits
        assert held.granted
        await store.reset(POOL)
        assert await listener.next() == ALL_SLOTS
        assert listener.heard.empty()
    finally:
        await listener.close()


async def test_reset_forgets_state_reservations_and_leases(backend: Backend) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0)
    await _save(store, rate="0.5", concurrency="1")
    await store.acquire(POOL, "held", 60.0, LEASE_TTL)

    await store.reset(POOL)
    assert await store.load_state(POOL) is None
    fresh = await store.acquire(POOL, "fresh", 60.0, LEASE_TTL)
    assert (fresh.granted, fresh.wait, fresh.rate, fresh.in_flight) == (True, 0.0, 1.0, 1)
    # After a reset the version starts again: a step that loaded nothing may save.
    assert await store.save_state(POOL, {"rate": "2"}, 0)


async def test_bounds_are_kept_apart_from_the_state_and_survive_a_reset(backend: Backend) -> None:
    store = await backend.open()
    assert await store.load_bounds(POOL) == {}
    await store.save_bounds(POOL, {"min_rate": "2.0", "max_rate": "5.0"})
    await _save(store, rate="4.0")  # a step replaces the state, not the bounds
    assert await store.load_bounds(POOL) == {"min_rate": "2.0", "max_rate": "5.0"}
    await store.reset(POOL)
    assert await store.load_state(POOL) is None
    assert await store.load_bounds(POOL) == {"min_rate": "2.0", "max_rate": "5.0"}
    await store.save_bounds(POOL, {})
    assert await store.load_bounds(POOL) == {}


# --- parking: a key whose quota is spent, or that is unusable -----------------------------


async def test_a_parked_pool_refuses_with_the_wait_to_its_end_and_why_then_comes_back(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1000.0)
    await _save(store, rate="1000", concurrency="4")
    held = await store.acquire(POOL, "before", 60.0, LEASE_TTL)
    parked = await store.park(POOL, 0.4, "quota 1308: the 5-hour quota is spent")
    assert parked.reason == "quota 1308: the 5-hour quota is spent"
    assert parked.until == pytest.approx(parked.since + 0.4, abs=EXACT)

    refused = await store.acquire(POOL, "during", 60.0, LEASE_TTL)
    assert (refused.granted, refused.reason) == (False, "parked")
    assert refused.parked == "quota 1308: the 5-hour quota is spent"
    assert refused.wait == pytest.approx(parked.until - refused.now, abs=EXACT)
    assert 0 < refused.wait <= 0.4
    # A parked pool's refusals take no lease: the one held before is the only one.
    assert refused.in_flight == held.in_flight == 1
    assert await store.parking(POOL) == parked

    await asyncio.sleep(0.5)
    assert await store.parking(POOL) is None
    after = await store.acquire(POOL, "after", 60.0, LEASE_TTL)
    assert (after.granted, after.reason, after.parked, after.in_flight) == (True, "ok", "", 2)


async def test_a_parking_until_lifted_refuses_forever_and_a_lift_ends_it_at_once(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1000.0)
    parked = await store.park(POOL, FOREVER, "arrears 1113")
    assert (parked.until, parked.reason) == (math.inf, "arrears 1113")
    refused = await store.acquire(POOL, "a", 60.0, LEASE_TTL)
    assert (refused.granted, refused.reason, refused.wait) == (False, "parked", math.inf)
    assert refused.parked == "arrears 1113"

    assert await store.lift(POOL) is True
    assert await store.lift(POOL) is False  # nothing left to lift
    assert await store.parking(POOL) is None
    assert (await store.acquire(POOL, "b", 60.0, LEASE_TTL)).granted


@pytest.mark.parametrize(
    ("first", "second", "kept"),
    [
        ((30.0, "weekly"), (0.2, "five-hour"), "weekly"),  # a shorter parking is ignored
        ((0.2, "five-hour"), (30.0, "weekly"), "weekly"),  # a longer one extends it
        ((FOREVER, "arrears"), (30.0, "weekly"), "arrears"),
        ((30.0, "weekly"), (FOREVER, "expired plan"), "expired plan"),
    ],
)
async def test_a_parking_never_shortens_the_one_in_force(
    backend: Backend, first: tuple[float, str], second: tuple[float, str], kept: str
) -> None:
    store = await backend.open()
    await store.park(POOL, *first)
    in_force = await store.park(POOL, *second)
    assert in_force.reason == kept
    assert await store.parking(POOL) == in_force
    expected = max(first[0], second[0])
    assert in_force.until - in_force.since == pytest.approx(expected, abs=0.05)


async def test_a_parking_is_seen_by_every_replica_and_only_in_its_own_pool(
    backend: Backend,
) -> None:
    parker, other = await backend.open(), await backend.open()
    await parker.park(POOL, 30.0, "quota 1310")
    assert (await other.acquire(POOL, "a", 60.0, LEASE_TTL)).reason == "parked"
    assert (await other.acquire("another-key", "a", 60.0, LEASE_TTL)).granted
    assert await other.parking("another-key") is None
    assert await other.lift(POOL)
    assert (await parker.acquire(POOL, "b", 60.0, LEASE_TTL)).granted


async def test_reset_forgets_what_was_learned_but_not_a_parking(backend: Backend) -> None:
    store = await backend.open()
    await store.park(POOL, FOREVER, "expired plan 1309")
    await store.reset(POOL)
    assert (await store.acquire(POOL, "a", 60.0, LEASE_TTL)).reason == "parked"


@pytest.mark.parametrize(
    ("seconds", "reason"), [(0.0, "x"), (-1.0, "x"), (math.nan, "x"), (1.0, "")]
)
async def test_a_parking_without_a_time_or_a_reason_is_refused(
    backend: Backend, seconds: float, reason: str
) -> None:
    store = await backend.open()
    with pytest.raises(ValueError):
        await store.park(POOL, seconds, reason)
    assert await store.parking(POOL) is None


async def test_a_finite_parking_on_redis_expires_by_itself() -> None:
    client = fakeredis.FakeAsyncRedis()
    store = RedisStore(client, StoreConfig())
    await store.park(POOL, 30.0, "quota 1308")
    ttl = await client.pttl(keys.pool_keys(store.config.prefix, POOL).parked)
    assert 29_000 < ttl <= 30_000
    await store.park("forever", FOREVER, "arrears 1113")
    assert await client.pttl(keys.pool_keys(store.config.prefix, "forever").parked) == -1


# --- replicas, leadership, pools, sharing --------------------------------------------------


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
    store = await backend.open(tick_seconds=0.025, tick_ttl_seconds=0.3)
    assert await store.pools() == []
    for pool in ("b", "a"):
        await store.acquire(pool, "lease", 60.0, LEASE_TTL)
    assert sorted(await store.pools()) == ["a", "b"]

    await asyncio.sleep(0.4)
    await store.acquire("c", "lease", 60.0, LEASE_TTL)
    assert await store.pools() == ["c"]


async def test_two_stores_on_one_backend_share_everything(backend: Backend) -> None:
    config = {"initial_rate": 1.0, "burst_seconds": 0.0}
    one, two = await backend.open(**config), await backend.open(**config)
    await _save(one, rate="1.0", concurrency="1", probe_base="0.5")

    first = await one.acquire(POOL, "one", 60.0, LEASE_TTL)
    crowded = await two.acquire(POOL, "two", 60.0, LEASE_TTL)
    assert first.granted and crowded.reason == "concurrency"
    tick = one.config.tick_of(first.now)
    await one.report(POOL, {tick: {"ok": 1}}, release=["one"])
    second = await two.acquire(POOL, "two", 60.0, LEASE_TTL)
    assert _send_time(second) == pytest.approx(first.now + 1.0, abs=EXACT)
    assert (await two.read_ticks(POOL, tick, tick))[tick]["ok"] == 1

    # A push made through one store is what the other's next acquire gets.
    await two.report(POOL, {tick: {"rate_frequency": 1}}, release=["two"])
    assert (await one.acquire(POOL, "three", 60.0, LEASE_TTL)).rate == 0.5
    saved = await two.load_state(POOL)
    assert saved is not None and saved["rate"] == "0.5"
    assert await two.save_state(POOL, {"rate": "3"}, state_version(saved))
    assert await one.load_state(POOL) == {"rate": "3", "version": str(state_version(saved) + 1)}
    await one.heartbeat(POOL, "proxy-1", 5.0)
    assert await two.heartbeat(POOL, "proxy-2", 5.0) == 2
    assert await two.pools() == [POOL]


async def test_concurrent_acquires_from_two_stores_get_distinct_slots_one_interval_apart(
    backend: Backend,
) -> None:
    config = {"initial_rate": 50.0, "burst_seconds": 0.25}
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
    # Each acquire is atomic: every grant saw the leases before it and no other.
    assert sorted(a.in_flight for a in admissions) == list(range(1, 201))


# --- the pure parts of the contract --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        (None, 7.0),
        ("", 7.0),
        ("2.5", 2.5),
        ("inf", math.inf),
        ("0", 7.0),
        ("-1", 7.0),
        ("nan", 7.0),
        ("-inf", 7.0),
        ("1e400", 7.0),  # overflows to infinity, which only "inf" means
        ("Infinity", 7.0),
        ("fast", 7.0),
    ],
)
def test_parse_rate(text: str | None, rate: float) -> None:
    assert parse_rate(text, 7.0) == rate


@pytest.mark.parametrize(
    ("text", "cap"),
    [(None, None), ("", None), ("4", 4), ("7.9", 7), ("0", 1), ("nan", None), ("inf", None)],
)
def test_parse_cap(text: str | None, cap: int | None) -> None:
    assert parse_cap(text) == cap


@pytest.mark.parametrize(
    ("saved", "version"),
    [(None, 0), ({}, 0), ({"rate": "1"}, 0), ({"version": "7"}, 7), ({"version": "x"}, 0)],
)
def test_state_version(saved: dict[str, str] | None, version: int) -> None:
    assert state_version(saved) == version


@pytest.mark.parametrize(
    "overrides",
    [
        {"prefix": ""},
        {"prefix": "a:b"},
        {"prefix": "{x}"},
        {"initial_rate": 0.0},
        {"burst_seconds": -1.0},
        {"tick_seconds": 0.0},
        {"tick_seconds": 1.0, "tick_ttl_seconds": 7.0},  # under eight ticks
    ],
)
def test_a_store_config_refuses_what_cannot_work(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        StoreConfig(**overrides)


def test_tick_of_is_the_index_of_the_tick_holding_a_time() -> None:
    config = StoreConfig(tick_seconds=0.25)
    assert [config.tick_of(t) for t in (0.0, 0.24, 0.25, 1000.6)] == [0, 0, 1, 4002]


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
        lambda: store.report(POOL, {0: {"ok": 1}}),
        lambda: store.report(POOL, {}, release=["a"]),
        lambda: store.renew(POOL, ["a"], 1.0),
        lambda: store.heartbeat(POOL, "r", 1.0),
        store.pools,
        lambda: store.read_ticks(POOL, 0, 3),
        lambda: store.load_state(POOL),
        lambda: store.save_state(POOL, {"rate": "1"}, 0),
        lambda: store.load_bounds(POOL),
        lambda: store.save_bounds(POOL, {"max_rate": "1"}),
        lambda: store.replicas(POOL),
        lambda: store.reset(POOL),
        lambda: store.lead("node", 1.0),
        lambda: anext(store.freed(POOL)),
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
    names = [pool_keys.state, pool_keys.bounds, pool_keys.tat, pool_keys.leases]
    names += [pool_keys.replicas, pool_keys.parked, pool_keys.waiters]
    names += [pool_keys.tick(index) for index in (0, 7_200_000_000)]
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


async def test_the_memory_store_forgets_expired_ticks_leases_and_replicas() -> None:
    clock = _Clock()
    store = MemoryStore(StoreConfig(tick_seconds=0.25, tick_ttl_seconds=2.0), clock=clock)
    for i in range(50):
        await store.acquire("old", f"lease{i}", 60.0, 1.0)
        await store.heartbeat("old", f"replica{i}", 1.0)
        await store.report("old", {store.config.tick_of(clock.now): {"ok": 1}})
        clock.now += 0.01
    assert store.footprint > 100

    clock.now += 10.0
    await store.acquire("new", "lease", 60.0, 1.0)
    assert store.footprint == 2  # the new pool and its lease
    assert await store.pools() == ["new"]
