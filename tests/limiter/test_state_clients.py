"""The clients' flows of each pool, as a real limiter's GET /state and ``zai-proxy status``
show them: the leases each client holds in the pool now and its requests waiting."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.limiter.shared_state import LEASE_TTL, SharedState
from tests.limiter.test_service import AUTH, INITIAL_RATE, TICK, TOKEN, limiter_env
from tests.support import own_prefix, start_limiter, wait_until
from zai_proxy import status
from zai_proxy.limiter.redis_store import RedisStore
from zai_proxy.limiter.store import Claim, lease_id

POOL = "glm-flows"
IDE = Claim("ide", weight=2.0)
CI = Claim("ci", rank=1)


@pytest.fixture
def store(real_redis_url: str) -> Iterator[SharedState]:
    """The limiter's Redis state under this test's own prefix."""
    with own_prefix(real_redis_url) as prefix:
        yield SharedState(real_redis_url, prefix, TICK, INITIAL_RATE)


def ask(store: SharedState, claim: Claim, count: int = 1) -> list[str]:
    """``count`` slots asked for by ``claim``, with no wait allowed; each answer's reason."""

    async def acquire(redis_store: RedisStore) -> list[str]:
        reasons: list[str] = []
        for _ in range(count):
            lease = lease_id(claim, uuid.uuid4().hex)
            admission = await redis_store.acquire(POOL, lease, 0.0, LEASE_TTL, claim)
            reasons.append(admission.reason)
        return reasons

    return store.run(acquire)


def clients(url: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/state", headers=AUTH, timeout=5)
    answer.raise_for_status()
    return list(answer.json()["pools"][POOL]["clients"])


def test_state_and_status_show_each_clients_leases_held_and_requests_waiting(
    real_redis_url: str, store: SharedState, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test holds the leader lease, so the cap of 2 written here stays in force.
    assert store.hold_lease("the-test")
    store.save_learned(POOL, rate=float("inf"), limit=None, cap=2)
    assert ask(store, IDE, 2) == ["ok", "ok"]

    with start_limiter(limiter_env(real_redis_url, store.config.prefix)) as limiter:
        assert clients(limiter.url) == [
            {"client": "ide", "class": "interactive", "weight": 2.0, "held": 2, "waiting": 0}
        ]
        # The pool is full: ci's request is refused and waits (for about a second, unless
        # it asks again), so ask again until the state is read while it waits.
        seen: list[dict[str, Any]] = []

        def ci_waits() -> bool:
            assert ask(store, CI) == ["concurrency"]
            seen[:] = clients(limiter.url)
            return len(seen) == 2

        wait_until(ci_waits, timeout=10)
        # Interactive flows first (the class served first), then batch ones.
        assert seen == [
            {"client": "ide", "class": "interactive", "weight": 2.0, "held": 2, "waiting": 0},
            {"client": "ci", "class": "batch", "weight": 1.0, "held": 0, "waiting": 1},
        ]

        monkeypatch.setenv("LIMITER_PORT", limiter.url.rsplit(":", 1)[1])
        monkeypatch.setenv("LIMITER_ADMIN_TOKEN", TOKEN)
        ask(store, CI)
        text, _ = status.report()
        section = text.split(f"clients of pool {POOL}\n", 1)[1].split("\n\n", 1)[0]
        rows = [line.split() for line in section.splitlines()]
        assert rows[0] == ["client", "class", "weight", "held", "waiting"]
        assert ["ide", "interactive", "2", "2", "0"] in rows[2:]
        # Without the admin token the flows are not shown (the rest of the report is).
        monkeypatch.delenv("LIMITER_ADMIN_TOKEN")
        assert "clients of pool" not in status.report()[0]


def test_a_pool_without_claims_lists_no_clients(real_redis_url: str, store: SharedState) -> None:
    store.touch(POOL)  # an acquire without a claim: a lease, but no client's flow
    with start_limiter(limiter_env(real_redis_url, store.config.prefix)) as limiter:
        assert clients(limiter.url) == []
