"""The limiter's shared state in Redis, read and written as the tests need it, through the
store the proxies and the limiter use."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from zai_proxy.limiter.control import encode_state
from zai_proxy.limiter.controller import ControllerState, Decision
from zai_proxy.limiter.redis_store import RedisStore
from zai_proxy.limiter.store import StoreConfig

T = TypeVar("T")
LEASE_TTL = 30.0


class SharedState:
    """Reads and writes the limiter's Redis state through the store the proxies use.

    Synchronous for the tests: each call opens a store on its own event loop.
    """

    def __init__(self, redis_url: str, prefix: str, window: float, initial_rate: float) -> None:
        self.redis_url = redis_url
        self.config = StoreConfig(prefix=prefix, initial_rate=initial_rate, window_seconds=window)

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
        ceiling: float | None,
        clean_windows: int = 0,
        decision: Decision = Decision.HOLD,
        age: float = 0.0,
    ) -> None:
        """Save a pool's state as the limiter's leader would have ``age`` seconds ago."""
        state = ControllerState(
            rate=rate,
            concurrency=256.0,
            ceiling=ceiling,
            clean_windows=clean_windows,
            last_decision=decision,
        )

        async def save(store: RedisStore) -> None:
            at = await store.now() - age
            window = self.config.window_of(at) - 1
            fields = encode_state(state, window, self.config.window_seconds, at, rate)
            await store.save_state(pool, fields)

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

    def bounds(self, pool: str) -> dict[str, str]:
        """A pool's saved bounds."""
        return self.run(lambda store: store.load_bounds(pool))

    def heartbeat(self, pool: str, replica: str) -> int:
        """A proxy replica's heartbeat, good for a minute."""
        return self.run(lambda store: store.heartbeat(pool, replica, ttl=60))

    def hold_lease(self, node: str) -> bool:
        """Take the limiters' leader lease for two minutes."""
        return self.run(lambda store: store.lead(node, ttl=120))
