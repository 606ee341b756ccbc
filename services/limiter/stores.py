"""The one place where the limiter store's backend is chosen."""

from __future__ import annotations

from typing import Any

from zai_proxy.limiter.memory_store import MemoryStore
from zai_proxy.limiter.redis_store import RedisStore
from zai_proxy.limiter.store import LimiterStore, StoreConfig


def open_store(redis_url: str | None, config: StoreConfig, **redis_options: Any) -> LimiterStore:
    """Redis when a URL is given, else the in-process store.

    ``redis_options`` go to ``RedisStore.from_url`` (timeouts, pool size); without a URL
    they are ignored, so callers can pass their settings through either way.
    """
    if redis_url:
        return RedisStore.from_url(redis_url, config, **redis_options)
    return MemoryStore(config)
