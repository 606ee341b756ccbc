"""The control loop and the control plane: ticks stepped once, pushes folded into the law's
state, compare-and-set saves, leadership, quota pacing from the first request on.

The loop runs over a MemoryStore on an injected clock, so every step is exact and the
file needs no sleeping; the control plane's quota poll asks a real simulator, and a proxy
running alone (no REDIS_URL) is started as a real process.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator, Mapping

import httpx
import pytest
from pydantic import SecretStr

from tests.support import ServiceProcess, launch_proxy, scrape, wait_until
from zai_proxy.limiter.control import (
    LEASE_TICKS,
    SETTLE_SECONDS,
    ControlLoop,
    StepResult,
    decode_law,
    encode_law,
    encode_state,
    load_law,
)
from zai_proxy.limiter.controller import CapState, Decision, Params, RateState, State
from zai_proxy.limiter.memory_store import MemoryStore
from zai_proxy.limiter.plane import ControlPlane
from zai_proxy.limiter.settings import LimiterSettings
from zai_proxy.limiter.store import StoreConfig, state_version
from zai_proxy.simulator.process import SimulatorProcess, start_simulator

POOL = "glm"
TICK = 0.25
PARAMS = Params(tick_seconds=TICK, initial_rate=20.0)
CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}


class Clock:
    """The store's clock, moved by the test; starts 50 ms into a tick."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.05

    def __call__(self) -> float:
        return self.now


def memory_store(clock: Clock) -> MemoryStore:
    return MemoryStore(StoreConfig(tick_seconds=TICK, initial_rate=20.0), clock=clock)


def loop_over(store: MemoryStore, **options: object) -> ControlLoop:
    return ControlLoop(store, PARAMS, state_max_age=3600.0, node="node-a", **options)  # type: ignore[arg-type]


def due(store: MemoryStore, now: float) -> int:
    """The last tick a step at ``now`` consumes (it has settled)."""
    return store.config.tick_of(now - SETTLE_SECONDS) - 1


async def save_law(store: MemoryStore, state: State, now: float, consumed: int) -> None:
    """Save a law state as the leader's step would have at ``now``."""
    fields = encode_state(state, PARAMS, consumed=consumed, now=now, rate=state.rate.rate)
    assert await store.save_state(POOL, fields, state_version(await store.load_state(POOL)))


def probing(now: float) -> State:
    """The law in the middle of a rate probe (30 req/s above a limit of 20, back to 19.6
    on the first 429) and of a cap probe (8, epoch 3, back to 7 on the first 1302)."""
    rate = RateState(rate=30.0, limit=20.0, since=now, base=19.6, step_until=now + 5.0)
    return State(rate=rate, cap=CapState(cap=8, epoch=3, since=now, base=7))


async def saved_law(store: MemoryStore) -> tuple[dict[str, str], State]:
    saved = await store.load_state(POOL)
    assert saved is not None
    state = decode_law(saved["law"])
    assert state is not None
    return saved, state


# --- pushes --------------------------------------------------------------------------------


async def test_a_step_folds_the_stores_pushes_into_the_law_instead_of_undoing_them() -> None:
    clock = Clock()
    store = memory_store(clock)
    loop = loop_over(store)
    start = clock.now
    # One settled tick is left to step, so the next step comes before the push's tick is.
    await save_law(store, probing(start), start, consumed=due(store, start) - 1)
    await store.acquire(POOL, "lease", 60.0, 30.0)  # registers the pool

    clock.now += 0.01
    pushed_at = clock.now
    tick = store.config.tick_of(clock.now)
    await store.report(
        POOL, {tick: {"sent": 2, "rate_frequency": 1, "rate_concurrency": 1, "refused_at": 5}}
    )
    clock.now += 0.01
    (result,) = await loop.tick()
    assert result.ticks == 1 and due(store, clock.now) < tick  # the push's tick is not in yet

    saved, state = await saved_law(store)
    # The step did not put the probe's rate or the old cap back: the law took the push.
    assert (saved["rate"], saved["probe_base"], saved["probing"]) == ("19.6", "", "")
    assert (saved["concurrency"], saved["epoch"], saved["cap_base"]) == ("7", "4", "")
    assert (state.rate.rate, state.rate.base, state.rate.since) == (19.6, None, pushed_at)
    assert state.rate.over == 30.0  # remembered as over the limit: later probes stay below
    assert (state.cap.cap, state.cap.epoch, state.cap.since) == (7, 4, pushed_at)

    # Once the push's tick is stepped, its 429 and 1302 are not counted a second time.
    clock.now += 1.0
    (later,) = await loop.tick()
    assert later.ticks == 4
    saved, state = await saved_law(store)
    assert (saved["rate"], saved["concurrency"]) == ("19.6", "7")
    assert later.decision is Decision.HOLD and state.cap_decision is Decision.HOLD


class RacingStore(MemoryStore):
    """A store where a proxy reports a 429 while the first step is between load and save."""

    def __init__(self, config: StoreConfig, clock: Clock) -> None:
        super().__init__(config, clock=clock)
        self.raced = False

    async def save_state(self, pool: str, fields: Mapping[str, str], version: int) -> bool:
        if not self.raced:
            self.raced = True
            tick = self.config.tick_of(await self.now())
            await self.report(pool, {tick: {"rate_frequency": 1}})
        return await super().save_state(pool, fields, version)


async def test_a_step_that_loses_the_race_with_a_push_saves_nothing_and_steps_again_next_tick() -> (
    None
):
    clock = Clock()
    store = RacingStore(StoreConfig(tick_seconds=TICK, initial_rate=20.0), clock)
    loop = loop_over(store)
    start = clock.now
    await save_law(store, probing(start), start, consumed=due(store, start) - 1)
    store.raced = False
    await store.acquire(POOL, "lease", 60.0, 30.0)

    clock.now += 0.01
    assert await loop.tick() == []  # the save found a newer version: nothing stepped
    saved, state = await saved_law(store)
    assert (saved["rate"], saved["probe_base"]) == ("19.6", "")  # the push stands
    assert state.rate.base == 19.6  # the law's state is the one before the step

    (result,) = await loop.tick()  # the same ticks again, now with the push folded in
    saved, state = await saved_law(store)
    assert result.ticks == 1
    assert (saved["rate"], state.rate.base, state.rate.over) == ("19.6", None, 30.0)


async def test_the_first_step_of_a_new_pool_keeps_the_cap_its_first_1302_pushed() -> None:
    clock = Clock()
    store = memory_store(clock)
    loop = loop_over(store)
    await store.acquire(POOL, "lease", 60.0, 30.0)
    tick = store.config.tick_of(clock.now)
    await store.report(POOL, {tick: {"sent": 6, "rate_concurrency": 1, "refused_at": 6}})
    assert (await store.load_state(POOL) or {})["concurrency"] == "5"  # before any step

    clock.now += 1.0
    await loop.tick()
    saved, state = await saved_law(store)
    assert (saved["concurrency"], state.cap.cap) == ("5", 5)
    # A stale push (older than the state's max age) does not come back with a fresh law.
    old = {"concurrency": "3", "epoch": "1", "pushed_cap": repr(clock.now - 7200)}
    assert load_law(old, clock.now, 3600.0, PARAMS).cap.cap is None


@pytest.mark.parametrize(
    ("saved", "folded"),
    [
        ({"pushed_rate": "99.0"}, True),  # a push after the step that saved the law
        ({"pushed_rate": "50.0"}, False),  # one the law already took
        ({}, False),
    ],
)
def test_load_law_folds_only_pushes_newer_than_the_saved_law(
    saved: dict[str, str], folded: bool
) -> None:
    state = probing(10.0)
    fields = {"law": encode_law(state), "updated_at": "60.0", **saved}
    loaded = load_law(fields, now=100.0, max_age=3600.0, params=PARAMS)
    assert (loaded.rate.base is None) is folded
    assert loaded.rate.rate == (19.6 if folded else 30.0)


def test_load_law_starts_afresh_from_an_old_or_unreadable_state() -> None:
    fields = {"law": encode_law(probing(10.0)), "updated_at": "10.0"}
    assert load_law(fields, now=100.0, max_age=60.0, params=PARAMS).rate.limit is None
    assert load_law({"law": "{not json", "updated_at": "99"}, 100.0, 60.0, PARAMS).rate.rate == 20.0
    assert decode_law(encode_law(probing(10.0))) == probing(10.0)


# --- ticks and leadership ------------------------------------------------------------------


async def test_each_settled_tick_is_stepped_once() -> None:
    clock = Clock()
    store = memory_store(clock)
    loop = loop_over(store)
    await store.acquire(POOL, "lease", 60.0, 30.0)
    first = await loop.tick()
    assert [r.ticks for r in first] == [1]  # a new pool starts from the last settled tick
    assert await loop.tick() == []  # nothing new has settled

    clock.now += 4 * TICK
    tick = store.config.tick_of(clock.now) - 2
    await store.report(POOL, {tick: {"sent": 3, "ok": 2, "rate_frequency": 1}})
    (step,) = await loop.tick()
    assert step.ticks == 4
    assert (step.counts["sent"], step.counts["ok"], step.counts["rate_frequency"]) == (3, 2, 1)
    saved = await store.load_state(POOL)
    assert saved is not None and int(saved["consumed"]) == due(store, clock.now)


async def test_only_the_leader_steps_and_another_node_takes_over_when_its_lease_lapses() -> None:
    clock = Clock()
    store = memory_store(clock)
    leader, follower = loop_over(store), ControlLoop(store, PARAMS, state_max_age=3600.0)
    await store.acquire(POOL, "lease", 60.0, 30.0)
    assert await leader.tick() and leader.leader
    clock.now += TICK
    assert await follower.tick() == [] and not follower.leader

    clock.now += LEASE_TICKS * TICK  # the leader stopped renewing
    assert await follower.tick() and follower.leader


async def test_a_quota_cap_holds_the_rate_below_the_laws_but_never_below_the_minimum() -> None:
    clock = Clock()
    store = memory_store(clock)
    caps: dict[str, float | None] = {POOL: 5.0, "other": None}
    steps: list[StepResult] = []
    loop = loop_over(store, rate_cap=lambda pool, rate: caps[pool], on_step=steps.append)
    for pool in (POOL, "other"):
        await store.acquire(pool, "lease", 60.0, 30.0)
    await loop.tick()
    assert {(s.pool, s.rate, s.quota_cap) for s in steps} == {
        (POOL, 5.0, 5.0),
        ("other", 20.0, None),
    }
    assert (await store.acquire(POOL, "next", 60.0, 30.0)).rate == 5.0

    caps[POOL] = 0.001
    clock.now += TICK
    await loop.tick()
    assert [s.rate for s in steps if s.pool == POOL] == [5.0, PARAMS.min_rate]
    assert (await store.acquire(POOL, "last", 60.0, 30.0)).rate == PARAMS.min_rate


# --- the control plane: quota pacing from the start ----------------------------------------

KEY = "sk-quota-test-0123456789"


@pytest.fixture
def spent_quota() -> Iterator[SimulatorProcess]:
    """A simulator whose five-hour quota is 97.5% spent (39 of 40), below the 5% reserve."""
    with start_simulator("--quota-requests", "5h=40") as simulator:
        with httpx.Client(base_url=simulator.url) as client:
            for _ in range(39):
                assert client.post("/api/paas/v4/chat/completions", json=CHAT).status_code == 200
        yield simulator


async def test_the_control_plane_paces_the_first_request_with_the_quota_polled_at_start(
    spent_quota: SimulatorProcess,
) -> None:
    settings = LimiterSettings(
        zai_api_key=SecretStr(KEY),
        zai_target_url=f"{spent_quota.url}/api/paas/v4",
        quota_poll_enabled=True,
        quota_pacing_enabled=True,
        quota_poll_interval=3600.0,  # only the poll at start can pace
        rate_limit_min=0.5,
        rate_limit_initial=1000.0,
    )
    store = MemoryStore(settings.store_config())
    plane = ControlPlane(store, settings)
    await plane.start()
    try:
        # No request yet, and the store already holds the paced rate for the key's pool.
        first = await store.acquire(settings.pool(), "first", 60.0, 30.0)
        assert first.rate == 0.5
        status = plane.quota.status()
        assert status is not None and status.windows[0].used_ratio == pytest.approx(0.975)
    finally:
        await plane.stop()


async def test_each_upstream_key_is_paced_by_its_own_quota_and_a_usable_one_is_lifted() -> None:
    alpha, beta = "sk-quota-alpha-0001", "sk-quota-beta-00002"
    keys = {
        "alpha": {"key": alpha, "quota_requests": "5h=40"},
        "beta": {"key": beta, "quota_requests": "5h=1000"},
    }
    with start_simulator("--keys", json.dumps(keys)) as simulator:
        async with httpx.AsyncClient(base_url=simulator.url) as client:
            auth = {"authorization": f"Bearer {alpha}"}
            for _ in range(40):  # alpha's five-hour window is spent; beta's is untouched
                answer = await client.post("/api/paas/v4/chat/completions", json=CHAT, headers=auth)
                assert answer.status_code == 200
        settings = LimiterSettings(
            zai_api_keys=SecretStr(f"alpha:{alpha},beta:{beta}"),
            zai_target_url=f"{simulator.url}/api/paas/v4",
            quota_poll_enabled=True,
            quota_pacing_enabled=True,
            quota_poll_interval=3600.0,
            rate_limit_min=0.5,
            rate_limit_initial=1000.0,
        )
        store = MemoryStore(settings.store_config())
        # Both parked (a 1308, a 1113); the polls at start show alpha spent, beta usable.
        await store.park("key-alpha", 3600.0, "its 5-hour quota is spent (Z.ai 1308)")
        await store.park("key-beta", math.inf, "its account is in arrears (Z.ai 1113)")
        plane = ControlPlane(store, settings)
        await plane.start()
        try:
            assert plane.quota.pools == ["key-alpha", "key-beta"]
            await asyncio.sleep(0.1)  # a lift runs as a task of the poll's callback
            assert await store.parking("key-beta") is None
            assert await store.parking("key-alpha") is not None
            await store.lift("key-alpha")  # to read its rate: acquire refuses a parked pool
            assert (await store.acquire("key-alpha", "a", 60.0, 30.0)).rate == 0.5
            assert (await store.acquire("key-beta", "b", 60.0, 30.0)).rate == 1000.0
            state = plane.quota.state()
            assert state is not None
            assert set(state["keys"]) == {"alpha", "beta"}
            assert state["keys"]["alpha"]["windows"][0]["used_ratio"] == 1.0
            assert state["keys"]["beta"]["windows"][0]["used_ratio"] == 0.0
        finally:
            await plane.stop()


def test_a_proxy_running_alone_polls_the_quota_at_start_and_paces_from_the_first_request(
    spent_quota: SimulatorProcess,
) -> None:
    env = {
        "REDIS_URL": "",  # the same as unset: the in-process store and control plane
        "QUOTA_POLL_ENABLED": "true",
        "QUOTA_PACING_ENABLED": "true",
        "QUOTA_POLL_INTERVAL": "3600",  # only the poll at start can pace
        "RATE_LIMIT_MIN": "0.5",
        "RATE_LIMIT_MAX_WAIT": "0.5",
        "ACCESS_LOG": "false",
    }
    proxy: ServiceProcess = launch_proxy(spent_quota.url, env)
    try:
        with httpx.Client(timeout=10) as client:
            answers = [
                client.post(f"{proxy.url}/v1/chat/completions", json=CHAT) for _ in range(20)
            ]
        # The gauges show what the limiter learned from its last answer, once a second.
        wait_until(lambda: scrape(proxy.url).value("proxy_limiter_rate") < 1000, timeout=5)
        metrics = scrape(proxy.url)
        stats = httpx.get(f"{spent_quota.url}/_sim/stats").json()
    finally:
        proxy.stop()
    held_back = [a for a in answers if a.headers.get("x-ratelimit-source") == "proxy"]
    print(
        f"lone proxy against a spent quota: {len(held_back)} of {len(answers)} held back by the "
        f"proxy; upstream answered {stats['accepted']} (39 before the proxy) and refused "
        f"{stats['rejected_429']}; proxy rate {metrics.value('proxy_limiter_rate')}"
    )
    # Paced at 0.5 req/s from the first request on: a request or two within the burst,
    # the rest held back by the proxy (a wait of 2 s is beyond RATE_LIMIT_MAX_WAIT),
    # instead of all 20 reaching an upstream that has no quota left for them.
    assert metrics.value("proxy_limiter_rate") == 0.5
    assert len(held_back) >= 18
    assert stats["accepted"] + sum(stats["rejected_429"].values()) <= 39 + 2


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_redis_url_means_no_redis(value: str) -> None:
    # Compose files and charts write an unset variable as an empty one.
    assert LimiterSettings(redis_url=value).redis_url is None
    assert LimiterSettings(redis_url="redis://127.0.0.1:6379/0").redis_url is not None
