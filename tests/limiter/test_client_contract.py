"""The limiter store's client contract (ADR 0020), on memory, fakeredis and a real Redis:
the fair share of a concurrency cap between flows (weighted max-min, priority ranks
first, weighed only while another flow waits) and the clients' fleet-wide budgets
(requests per minute, concurrent requests, tokens per UTC day)."""

from __future__ import annotations

import asyncio

import pytest

from tests.limiter.test_store_contract import LEASE_TTL, POOL, Backend, _save, backend
from zai_proxy.limiter.store import (
    DAY_SECONDS,
    FAIR_HORIZON_SECONDS,
    WAITING_SECONDS,
    Admission,
    Budgets,
    Claim,
    Flow,
    LimiterStore,
    fair_shares,
    flow_of,
    lease_id,
    over_share,
    parse_flow,
)

__all__ = ["backend"]  # the fixture, imported so that pytest finds it here

HEAVY = Claim("heavy")
LIGHT = Claim("light")


async def _capped(backend: Backend, cap: int) -> LimiterStore:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0)
    await _save(store, rate="inf", concurrency=str(cap))
    return store


async def _ask(store: LimiterStore, claim: Claim, name: str, pool: str = POOL) -> str:
    """Ask for a slot with no wait allowed; the reason of the answer."""
    admission = await store.acquire(pool, lease_id(claim, name), 0.0, LEASE_TTL, claim)
    return admission.reason


async def _release(store: LimiterStore, claim: Claim, *names: str, pool: str = POOL) -> None:
    await store.report(pool, {}, [lease_id(claim, name) for name in names])


# --- the shares, computed --------------------------------------------------------------------


def test_fair_shares_fill_every_flow_to_one_level_per_weight_never_above_its_demand() -> None:
    # Equal weights, both wanting more than half: half each.
    assert fair_shares({"a": (0, 1.0, 100), "b": (0, 1.0, 50)}, 12) == {"a": 6.0, "b": 6.0}
    # A flow wanting less than its share gets its demand; the rest goes to the other.
    assert fair_shares({"a": (0, 1.0, 100), "b": (0, 1.0, 2)}, 12) == {"a": 10.0, "b": 2.0}
    # By weight: 3 to 1.
    assert fair_shares({"a": (0, 3.0, 100), "b": (0, 1.0, 100)}, 12) == {"a": 9.0, "b": 3.0}
    # A lower rank is served first; the next rank shares what it leaves.
    shares = fair_shares({"i": (0, 1.0, 5), "b1": (1, 1.0, 100), "b2": (1, 1.0, 100)}, 12)
    assert shares == {"i": 5.0, "b1": 3.5, "b2": 3.5}
    assert fair_shares({"i": (0, 1.0, 100), "b": (1, 1.0, 100)}, 12) == {"i": 12.0, "b": 0.0}


def test_a_flow_over_its_share_yields_only_to_one_below_its_share_that_waits() -> None:
    heavy, light = HEAVY.flow, LIGHT.flow
    # Light holds 1 of a cap of 4 and waits: heavy, holding 3, must leave the slot.
    assert over_share(heavy, {heavy: 3, light: 1}, {heavy: 1, light: 1}, 4)
    # The light flow asks: it is below its share.
    assert not over_share(light, {heavy: 3, light: 1}, {light: 1}, 4)
    # Nobody else waits: the slot is heavy's (work conserving).
    assert not over_share(heavy, {heavy: 3, light: 1}, {heavy: 1}, 4)
    # Light waits but already holds its share.
    assert not over_share(heavy, {heavy: 2, light: 2}, {heavy: 1, light: 1}, 4)


def test_a_lease_id_names_its_flow() -> None:
    claim = Claim("ci.batch-1", weight=2.5, rank=1)
    lease = lease_id(claim, "replica-7")
    assert lease == "1:2.5:ci.batch-1/replica-7"
    assert flow_of(lease) == claim.flow
    assert parse_flow(flow_of(lease)) == (1, 2.5, "ci.batch-1")
    assert lease_id(None, "replica-7") == "replica-7"
    assert flow_of("replica-7") == ""


@pytest.mark.parametrize(
    "fields", [{"weight": 0.0}, {"rank": 2}, {"client": "a/b"}, {"client": ""}]
)
def test_a_claim_refuses_what_the_store_cannot_carry(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Claim(**{"client": "c", **fields})  # type: ignore[arg-type]


def test_a_budget_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        Budgets(rpm=0)


# --- the fair share of a cap -----------------------------------------------------------------


async def test_a_freed_slot_goes_to_the_waiting_flow_below_its_share(backend: Backend) -> None:
    store = await _capped(backend, 4)
    assert [await _ask(store, HEAVY, f"h{i}") for i in range(4)] == ["ok"] * 4
    queued = await store.acquire(POOL, lease_id(LIGHT, "l0"), 0.0, LEASE_TTL, LIGHT)
    assert queued.reason == "concurrency"  # the pool is full: light waits

    await _release(store, HEAVY, "h0")
    assert await _ask(store, HEAVY, "h4") == "share"  # light waits below its share
    assert await _ask(store, LIGHT, "l0") == "ok"
    # Nobody waits any more: the pool is full again for everyone.
    assert await _ask(store, HEAVY, "h4") == "concurrency"
    assert await store.flows(POOL) == [
        Flow("heavy", 0, 1.0, 3, 1),
        Flow("light", 0, 1.0, 1, 0),
    ]
    # Light waits no longer: a freed slot is anyone's (work conserving).
    await _release(store, HEAVY, "h1")
    assert await _ask(store, HEAVY, "h4") == "ok"


async def test_shares_follow_the_weights(backend: Backend) -> None:
    store = await _capped(backend, 4)
    big, small = Claim("big", weight=3.0), Claim("small")
    for i in range(4):
        assert await _ask(store, small, f"s{i}") == "ok"
    assert await _ask(store, big, "b0") == "concurrency"
    for i in range(3):
        # Each slot small frees goes to big (below 3 of 4) while big waits.
        await _release(store, small, f"s{i}")
        assert await _ask(store, small, f"s{i}x") == "share"
        assert await _ask(store, big, "b0" if i == 0 else f"b{i}") == "ok"
        if i < 2:
            assert await _ask(store, big, f"b{i + 1}") == "concurrency"
    flows = {flow.client: flow.held for flow in await store.flows(POOL)}
    assert flows == {"big": 3, "small": 1}
    # Big holds its share: the next free slot is small's, which waits.
    await _release(store, small, "s3")
    assert await _ask(store, big, "b9") == "share"
    assert await _ask(store, small, "s0x") == "ok"


async def test_a_waiting_interactive_flow_comes_before_batch(backend: Backend) -> None:
    store = await _capped(backend, 2)
    batch, interactive = Claim("ci", rank=1), Claim("ide", rank=0)
    assert [await _ask(store, batch, "b0"), await _ask(store, batch, "b1")] == ["ok", "ok"]
    assert await _ask(store, interactive, "i0") == "concurrency"
    await _release(store, batch, "b0")
    assert await _ask(store, batch, "b2") == "share"
    assert await _ask(store, interactive, "i0") == "ok"


async def test_a_request_that_gave_up_waiting_no_longer_holds_the_slot_back(
    backend: Backend,
) -> None:
    store = await _capped(backend, 1)
    assert await _ask(store, HEAVY, "h0") == "ok"
    assert await _ask(store, LIGHT, "l0") == "concurrency"
    await _release(store, LIGHT, "l0")  # it gave up: its lease goes back, never granted
    await _release(store, HEAVY, "h0")
    assert await _ask(store, HEAVY, "h1") == "ok"


async def test_a_refused_request_that_will_not_ask_again_does_not_wait(backend: Backend) -> None:
    store = await _capped(backend, 1)
    passing = Claim("light", queue=False)  # key routing asking whether a key has room now
    assert await _ask(store, HEAVY, "h0") == "ok"
    assert await _ask(store, passing, "l0") == "concurrency"
    assert await store.flows(POOL) == [Flow("heavy", 0, 1.0, 1, 0)]
    await _release(store, HEAVY, "h0")
    assert await _ask(store, HEAVY, "h1") == "ok"


async def test_a_waiter_that_stops_asking_counts_for_waiting_seconds_only(
    backend: Backend,
) -> None:
    store = await _capped(backend, 2)
    assert [await _ask(store, HEAVY, "h0"), await _ask(store, HEAVY, "h1")] == ["ok", "ok"]
    assert await _ask(store, LIGHT, "l0") == "concurrency"
    await _release(store, HEAVY, "h0")
    assert await _ask(store, HEAVY, "h2") == "share"  # light waits: 1 slot each
    await asyncio.sleep(WAITING_SECONDS + 0.05)
    assert await _ask(store, HEAVY, "h2") == "ok"


async def test_a_pool_without_a_cap_has_nothing_to_share(backend: Backend) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0)
    await _save(store, rate="inf", concurrency="")
    assert [await _ask(store, HEAVY, f"h{i}") for i in range(20)] == ["ok"] * 20
    assert await _ask(store, LIGHT, "l0") == "ok"


async def test_reset_forgets_the_waiters(backend: Backend) -> None:
    store = await _capped(backend, 1)
    assert await _ask(store, HEAVY, "h0") == "ok"
    assert await _ask(store, LIGHT, "l0") == "concurrency"
    await store.reset(POOL)
    await _save(store, rate="inf", concurrency="1")
    assert await store.flows(POOL) == []


# --- budgets ---------------------------------------------------------------------------------


async def test_requests_per_minute_allow_that_many_in_any_minute(backend: Backend) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0)
    await _save(store, rate="inf", concurrency="")
    claim = Claim("ci", budgets=Budgets(rpm=3))
    answers = [
        await store.acquire(POOL, lease_id(claim, f"r{i}"), 0.0, LEASE_TTL, claim) for i in range(4)
    ]
    assert [a.reason for a in answers] == ["ok", "ok", "ok", "budget"]
    refused = answers[-1]
    assert refused.budget == "rpm"
    # The next request is allowed one interval (20 s) after the first.
    assert refused.wait == pytest.approx(20.0 - (refused.now - answers[0].now), abs=1e-3)
    # A retry of a request already charged passes; another client is not affected.
    retry = Claim("ci", budgets=Budgets(rpm=3), charge=False)
    assert await _ask(store, retry, "again") == "ok"
    assert await _ask(store, Claim("other", budgets=Budgets(rpm=3)), "o0") == "ok"
    # The budget holds in every pool together.
    assert await _ask(store, claim, "x", pool="second") == "budget"


async def test_concurrent_requests_count_in_every_pool_and_come_back_when_released(
    backend: Backend,
) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0)
    for pool in (POOL, "second"):
        await _save(store, pool, rate="inf", concurrency="")
    claim = Claim("ci", budgets=Budgets(concurrent=2))
    assert await _ask(store, claim, "a", pool=POOL) == "ok"
    assert await _ask(store, claim, "b", pool="second") == "ok"
    refused = await store.acquire(POOL, lease_id(claim, "c"), 0.0, LEASE_TTL, claim)
    assert (refused.reason, refused.budget) == ("budget", "concurrent")
    assert 0 < refused.wait <= 1.0
    await _release(store, claim, "b", pool="second")
    assert await _ask(store, claim, "c") == "ok"


async def test_a_renewed_lease_keeps_its_place_in_the_concurrent_budget(backend: Backend) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0)
    await _save(store, rate="inf", concurrency="")
    claim = Claim("ci", budgets=Budgets(concurrent=1))
    lease = lease_id(claim, "a")
    assert (await store.acquire(POOL, lease, 0.0, 0.3, claim)).granted
    await asyncio.sleep(0.2)
    assert await store.renew(POOL, [lease], 1.0) == 1
    await asyncio.sleep(0.2)  # past the first TTL, within the renewed one
    assert await _ask(store, claim, "b") == "budget"


async def test_tokens_per_day_refuse_until_the_next_utc_day(backend: Backend) -> None:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0)
    await _save(store, rate="inf", concurrency="")
    claim = Claim("ci", budgets=Budgets(tokens_per_day=1000))
    assert await _ask(store, claim, "a") == "ok"
    await store.report(POOL, {}, [lease_id(claim, "a")], tokens={"ci": 600})
    assert await _ask(store, claim, "b") == "ok"
    await store.report(POOL, {}, tokens={"ci": 400, "other": 5})
    refused = await store.acquire(POOL, lease_id(claim, "c"), 0.0, LEASE_TTL, claim)
    assert (refused.reason, refused.budget) == ("budget", "tokens_per_day")
    midnight = (refused.now // DAY_SECONDS + 1) * DAY_SECONDS
    assert refused.wait == pytest.approx(midnight - refused.now, abs=1e-3)
    assert await _ask(store, Claim("other", budgets=Budgets(tokens_per_day=1000)), "o") == "ok"


# --- the fair share of a rate ----------------------------------------------------------------


async def _rated(backend: Backend, rate: float) -> LimiterStore:
    store = await backend.open(initial_rate=1.0, burst_seconds=0.0)
    await _save(store, rate=repr(rate), concurrency="")
    return store


async def _book(store: LimiterStore, claim: Claim, name: str) -> Admission:
    return await store.acquire(POOL, lease_id(claim, name), 60.0, LEASE_TTL, claim)


async def test_a_claim_books_no_further_ahead_than_the_fair_horizon(backend: Backend) -> None:
    interval = FAIR_HORIZON_SECONDS / 8  # the horizon holds 8 turns beyond the first
    store = await _rated(backend, 1 / interval)
    booked = [await _book(store, HEAVY, f"h{i}") for i in range(10)]
    assert [a.reason for a in booked] == ["ok"] * 9 + ["queue"]
    first = booked[0].now
    assert booked[8].wait == pytest.approx(8 * interval - (booked[8].now - first), abs=1e-3)
    # It may ask again once its turn is within the horizon.
    assert booked[9].wait == pytest.approx(interval - (booked[9].now - first), abs=1e-3)
    # Without a claim the backlog is the rate's alone, as before clients.
    plain = await store.acquire(POOL, "plain", 60.0, LEASE_TTL)
    assert plain.granted and plain.wait > FAIR_HORIZON_SECONDS


async def test_a_light_client_waits_no_longer_than_the_horizon_behind_a_heavy_one(
    backend: Backend,
) -> None:
    interval = FAIR_HORIZON_SECONDS / 8
    store = await _rated(backend, 1 / interval)
    assert [(await _book(store, HEAVY, f"h{i}")).reason for i in range(9)] == ["ok"] * 9
    # Light arrives behind a full horizon: it waits its turn, and is counted waiting.
    assert [(await _book(store, LIGHT, f"l{i}")).reason for i in range(6)] == ["queue"] * 6
    # Two or three of heavy's turns go by: heavy still holds six or so of the 8 turns
    # ahead, over its half while light waits with none; light's next turn is in reach.
    await asyncio.sleep(2.4 * interval)
    assert (await _book(store, HEAVY, "h9")).reason == "queue"
    light = await _book(store, LIGHT, "l0")
    assert light.granted and light.wait <= FAIR_HORIZON_SECONDS
