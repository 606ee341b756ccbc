"""The limiter's shared state in Redis, read and written as the tests need it, through the
store the proxies and the limiter use."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from zai_proxy.limiter.control import decode_law, encode_state
from zai_proxy.limiter.controller import CapState, Decision, Params, RateState, State
from zai_proxy.limiter.redis_store import RedisStore
from zai_proxy.limiter.store import StoreConfig, state_version

T = TypeVar("T")
LEASE_TTL = 30.0


class SharedState:
    """Reads and writes the limiter's Redis state through the store the proxies use.

    Synchronous for the tests: each call opens a store on its own event loop.
    """

    def __init__(self, redis_url: str, prefix: str, tick: float, initial_rate: float) -> None:
        self.redis_url = redis_url
        self.config = StoreConfig(prefix=prefix, initial_rate=initial_rate, tick_seconds=tick)
        self.params = Params(tick_seconds=tick, initial_rate=initial_rate)

    def run(self, action: Callable[[RedisStore], Awaitable[T]]) -> T:
        """Run one action against a freshly opened store."""

        async def run() -> T:
            store = RedisStore.from_url(self.redis_url, self.config, socket_timeout=2.0)
            try:
                return await action(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def save_learned(
        self,
        pool: str,
        *,
        rate: float,
        limit: float | None,
        memory: float | None = None,
        cap: int | None = None,
        decision: Decision = Decision.HOLD,
        age: float = 0.0,
    ) -> None:
        """Save a pool's state as the limiter's leader would have ``age`` seconds ago: a
        rate in force with a learned limit (and the limit before a cut, ``memory``), a
        concurrency cap or none."""

        async def save(store: RedisStore) -> None:
            at = await store.now() - age
            rate_state = RateState(rate=rate, limit=limit, since=at, memory=memory, held_since=at)
            state = State(rate=rate_state, cap=CapState(cap=cap, since=at), rate_decision=decision)
            fields = encode_state(
                state, self.params, consumed=self.config.tick_of(at) - 1, now=at, rate=rate
            )
            version = state_version(await store.load_state(pool))
            assert await store.save_state(pool, fields, version), "a step saved meanwhile"

        self.run(save)

    def touch(self, pool: str) -> float:
        """One acquire, as a proxy's request makes it (it registers the pool); the rate."""

        async def acquire(store: RedisStore) -> float:
            admission = await store.acquire(pool, uuid.uuid4().hex, 60.0, LEASE_TTL)
            return admission.rate

        return self.run(acquire)

    def load(self, pool: str) -> dict[str, str] | None:
        """A pool's saved state."""
        return self.run(lambda store: store.load_state(pool))

    def law(self, pool: str) -> State | None:
        """The law's state as the leader saved it."""
        saved = self.load(pool)
        return decode_law(saved["law"]) if saved and saved.get("law") else None

    def bounds(self, pool: str) -> dict[str, str]:
        """A pool's saved bounds."""
        return self.run(lambda store: store.load_bounds(pool))

    def heartbeat(self, pool: str, replica: str) -> int:
        """A proxy replica's heartbeat, good for a minute."""
        return self.run(lambda store: store.heartbeat(pool, replica, ttl=60))

    def hold_lease(self, node: str) -> bool:
        """Take the limiters' leader lease for two minutes."""
        return self.run(lambda store: store.lead(node, ttl=120))
