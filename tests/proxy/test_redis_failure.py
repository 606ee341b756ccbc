"""Redis failure: proxies keep serving at their share of the last known rate while the
shared limiter store is down or stalled, say they are degraded, and rejoin when it answers.

Each test runs a private `redis-server` (so that it can be killed and restarted) and two
proxies in front of the simulated upstream, under steady load from a background thread.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support import (
    RedisServer,
    ServiceProcess,
    SteadyLoad,
    scrape,
    start_proxy,
    wait_until,
)
from zai_proxy.limiter.redis_store import RedisStore
from zai_proxy.limiter.store import StoreConfig, state_version
from zai_proxy.simulator.process import SimulatorProcess

POOL = "glm-test"
LAST_KNOWN_RATE = 30.0  # what the limiter learned before Redis went away
INITIAL_RATE = 40.0  # RATE_LIMIT_INITIAL: what a proxy would use without a learned rate
CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}
CLIENT_TIMEOUT = 5.0  # no request may hang: anything slower counts as failed


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private Redis on a free port; CI fails without the binary, elsewhere it skips."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed: the Redis failure tests need their own Redis"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def save_rate(server: RedisServer, prefix: str, rate: float) -> None:
    """Save a pool's rate as the limiter's leader does (the proxies' acquire reads it)."""

    async def save() -> None:
        store = RedisStore.from_url(server.url, StoreConfig(prefix=prefix), socket_timeout=2.0)
        try:
            # Compare-and-set on the version, as the limiter's steps save.
            version = state_version(await store.load_state(POOL))
            saved = await store.save_state(
                POOL, {"rate": repr(rate), "concurrency": "256"}, version
            )
            assert saved, "the state moved while it was saved"
        finally:
            await store.close()

    asyncio.run(save())


@pytest.fixture
def proxies(
    upstream: SimulatorProcess, redis_server: RedisServer
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Two proxies sharing the private Redis, with a learned rate of LAST_KNOWN_RATE."""
    prefix = f"test{uuid.uuid4().hex[:12]}"
    save_rate(redis_server, prefix, LAST_KNOWN_RATE)
    env = {
        "REDIS_URL": redis_server.url,
        "REDIS_PREFIX": prefix,
        "RATE_LIMIT_POOL": POOL,
        "RATE_LIMIT_INITIAL": f"{INITIAL_RATE:g}",
        "RATE_LIMIT_MAX": "100",
        "ACCESS_LOG": "false",
    }
    with start_proxy(upstream.url, env=env) as one, start_proxy(upstream.url, env=env) as two:
        for proxy in (one, two):
            # One request teaches the proxy the shared rate; heartbeats (every 2 s) count
            # the replicas.
            assert httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT).status_code == 200
        for proxy in (one, two):
            wait_for_gauges(proxy, replicas=2, rate=LAST_KNOWN_RATE, timeout=8)
        yield one, two


def wait_for_gauges(proxy: ServiceProcess, timeout: float, **expected: float) -> None:
    """Wait until the proxy's proxy_limiter_<name> gauges show the expected values."""

    def shown() -> bool:
        metrics = scrape(proxy.url)
        return all(metrics.value(f"proxy_limiter_{k}") == v for k, v in expected.items())

    wait_until(shown, timeout)


def gauges(proxy: ServiceProcess, *names: str) -> tuple[float, ...]:
    """The proxy's proxy_limiter_<name> gauges."""
    metrics = scrape(proxy.url)
    return tuple(metrics.value(f"proxy_limiter_{name}") for name in names)


def health(proxy: ServiceProcess) -> str:
    return str(httpx.get(f"{proxy.url}/health", timeout=2).json()["status"])


def test_proxies_serve_at_their_share_while_redis_is_down_and_rejoin_when_it_is_back(
    redis_server: RedisServer, proxies: tuple[ServiceProcess, ServiceProcess]
) -> None:
    share = LAST_KNOWN_RATE / len(proxies)
    # Six clients per proxy ask for far more than its share: the limiter sets the pace.
    with SteadyLoad([p.url for p in proxies], 6, timeout=CLIENT_TIMEOUT) as load:
        time.sleep(2.0)
        redis_server.stop()  # SIGKILL: a crash, not a shutdown
        killed = time.monotonic()
        degraded_after = wait_until(
            lambda: all(health(p) == "degraded" for p in proxies), timeout=3
        )
        for proxy in proxies:
            assert httpx.get(f"{proxy.url}/ready").status_code == 200
            wait_for_gauges(proxy, degraded=1, timeout=3)
            # The last known rate and replica count stay; the share is enforced locally.
            assert gauges(proxy, "replicas", "rate") == (2, LAST_KNOWN_RATE)
        # Measure a stretch of the outage that starts after the local buckets' burst.
        start = killed + 1.5
        time.sleep(max(0.0, start + 3.0 - time.monotonic()))
        end = time.monotonic()
        outage = [load.answered(i, start, end) for i in range(len(proxies))]

        redis_server.start()
        back = time.monotonic()
        rejoined_after = wait_until(lambda: all(health(p) == "ok" for p in proxies), timeout=5)
        for proxy in proxies:
            wait_for_gauges(proxy, degraded=0, timeout=3)
        # The restarted Redis starts empty; a rate saved now reaches both proxies, so they
        # are admitting through the shared store again.
        save_rate(redis_server, proxies[0].env["REDIS_PREFIX"], 24.0)
        for proxy in proxies:
            wait_for_gauges(proxy, replicas=2, rate=24.0, timeout=5)
        time.sleep(0.5)

    throughputs = [len(answers) / (end - start) for answers in outage]
    print(
        f"degraded {degraded_after:.2f} s after the kill; per-proxy throughput while down "
        f"{[round(t, 1) for t in throughputs]} req/s (share {share:g}); rejoined "
        f"{rejoined_after:.2f} s after Redis came back ({back - killed:.1f} s down); "
        f"{len(load.answers)} requests"
    )
    assert load.answers, "the load sent nothing"
    failed = [a for a in load.answers if a.status != 200]
    assert not failed, failed[:5]
    assert all(answer.status == 200 for answers in outage for answer in answers)
    # Each proxy admits its share of the last known rate: not the whole rate (which would
    # double the fleet's rate) and not the initial rate. The measured stretch is 3 s, so a
    # request or two at its edges is ~5%; the lower bound leaves room for a busy machine.
    for throughput in throughputs:
        assert 0.75 * share <= throughput <= 1.1 * share
    assert rejoined_after < 3.0


def test_a_stalled_redis_makes_proxies_degrade_instead_of_holding_requests(
    redis_server: RedisServer, proxies: tuple[ServiceProcess, ServiceProcess]
) -> None:
    block = 1.5
    # Two clients per proxy ask for less than its share, so no request waits for the
    # limiter and a request's time is the proxy's own.
    save_rate(redis_server, proxies[0].env["REDIS_PREFIX"], 1000.0)
    with SteadyLoad([p.url for p in proxies], 2, timeout=CLIENT_TIMEOUT) as load:
        time.sleep(1.5)
        before = time.monotonic()
        sleeper = subprocess.Popen(
            ["redis-cli", "-p", str(redis_server.port), "DEBUG", "SLEEP", f"{block:g}"],
            stdout=subprocess.DEVNULL,
        )
        try:
            degraded_after = wait_until(
                lambda: all(health(p) == "degraded" for p in proxies), timeout=block
            )
            assert sleeper.wait(block + 5) == 0
        finally:
            if sleeper.poll() is None:
                sleeper.kill()
                sleeper.wait()
        unblocked = time.monotonic()
        rejoined_after = wait_until(lambda: all(health(p) == "ok" for p in proxies), timeout=5)
        time.sleep(0.5)

    normal = [a.answered - a.sent for a in load.answers if a.answered < before]
    stalled = [a.answered - a.sent for a in load.answers if before <= a.sent < unblocked]
    print(
        f"Redis blocked {unblocked - before:.2f} s; degraded after {degraded_after:.2f} s; "
        f"slowest request before {max(normal):.3f} s, during the block {max(stalled):.3f} s "
        f"({len(stalled)} requests); rejoined {rejoined_after:.2f} s after it answered"
    )
    failed = [a for a in load.answers if a.status != 200]
    assert not failed, failed[:5]
    assert len(stalled) > 10
    # A Redis call gives up after REDIS_TIMEOUT (0.25 s); after that the proxy admits
    # locally, so no request waits for the block to end.
    assert max(stalled) < min(block / 2, max(normal) + 0.5)
    assert rejoined_after < 3.0
