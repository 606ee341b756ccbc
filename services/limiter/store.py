"""The limiter store: the one interface between proxies, the limiter and the shared state.

Two implementations sit behind it and are chosen in exactly one place (``open_store``):
``RedisStore`` (Lua scripts on Redis's own clock, shared by every replica) and
``MemoryStore`` (one process: ``REDIS_URL`` unset). One contract test suite runs against
both, and against fakeredis.

Hot path (proxies), one round trip each:
- ``acquire``: reserve a slot at the pool's current rate (GCRA with a small burst) and a
  concurrency lease; answer how long to wait. A wait longer than ``max_wait`` reserves
  nothing.
- ``report``: add one batch of outcome counts to a window and release leases (pipelined,
  off the response path).
- ``heartbeat``: say this replica is alive; learn how many share the pool.
- ``renew``: keep the concurrency leases of the attempts still running from expiring.

Control plane (the limiter's leader): ``pools``, ``read_window``, ``load_state``,
``save_state``, ``load_bounds``, ``save_bounds``, ``replicas``, ``reset``, ``lead``.

Error hierarchy:

    StoreError            any failure of the store
    └── StoreUnavailable  the store cannot be reached now (proxies degrade to local limits)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

# Defaults of StoreConfig, the values the settings start from.
DEFAULT_PREFIX = "zaiproxy"
DEFAULT_BURST_SECONDS = 0.25
DEFAULT_WINDOW_SECONDS = 5.0
DEFAULT_WINDOW_TTL_SECONDS = 120.0

# Saved controller state outlives restarts of every part, but a pool nobody steps for a
# week is gone (renewed by every save, so a live pool never expires).
STATE_TTL_SECONDS = 7 * 24 * 3600.0
# The wait suggested with a concurrency refusal: slots free when leases are released, at
# any moment, so the caller polls briefly instead of waiting an emission interval.
CONCURRENCY_RETRY_SECONDS = 0.05


class StoreError(Exception):
    """The limiter store failed."""


class StoreUnavailable(StoreError):
    """The limiter store cannot be reached now."""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """How a store lays out and times its state."""

    prefix: str = DEFAULT_PREFIX
    initial_rate: float = 5.0  # used while a pool has no saved state
    initial_concurrency: int = 256
    burst_seconds: float = DEFAULT_BURST_SECONDS  # GCRA tolerance
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    window_ttl_seconds: float = DEFAULT_WINDOW_TTL_SECONDS  # how long window counters live

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{}: "):
            raise ValueError("prefix must be a non-empty word without braces, colons or spaces")
        if self.initial_rate <= 0 or self.initial_concurrency < 1:
            raise ValueError("initial_rate must be > 0 and initial_concurrency >= 1")
        if self.burst_seconds < 0 or self.window_seconds <= 0:
            raise ValueError("burst_seconds must be >= 0 and window_seconds > 0")
        if self.window_ttl_seconds < 2 * self.window_seconds:
            raise ValueError("window_ttl_seconds must cover at least two windows")

    def window_of(self, now: float) -> int:
        """The index of the window holding a store-clock time."""
        return int(now // self.window_seconds)


@dataclass(frozen=True, slots=True)
class Admission:
    """The store's answer to one request for a slot."""

    granted: bool
    wait: float  # granted: seconds to wait before sending; refused: the wait it would need
    reason: Literal["ok", "rate", "concurrency"]
    rate: float  # the pool's rate now
    concurrency: int  # the pool's concurrency cap now
    now: float  # the store's clock (epoch seconds), so callers can align windows


class LimiterStore(Protocol):
    """Shared limiter state; see the module docstring for who calls what."""

    config: StoreConfig

    async def acquire(
        self, pool: str, lease: str, max_wait: float, lease_ttl: float, demand: bool = True
    ) -> Admission:
        """Reserve a slot (and a concurrency lease named ``lease``) unless the wait is too long.

        ``demand`` counts the call in the current window's demand (the proxy passes False
        and reports demand itself, as each request arrives). When the rate changed since
        the waits already granted were laid out, the backlog first moves to the new rate:
        what is left of it is scaled by old rate / new rate, at most ``max_wait`` ahead.
        """
        ...

    async def report(
        self, pool: str, window: int, counts: Mapping[str, int], release: Sequence[str] = ()
    ) -> None:
        """Add counts (keys: Outcome values, and `demand`) to a window; release leases."""
        ...

    async def renew(self, pool: str, leases: Sequence[str], ttl: float) -> int:
        """Extend leases still held to expire ``ttl`` seconds from now; return how many.

        A lease already released or expired stays gone. Holders renew their leases well
        within ``ttl``, so a lease outlives any request still running, and the leases of a
        proxy that died come back within ``ttl``.
        """
        ...

    async def heartbeat(self, pool: str, replica: str, ttl: float) -> int:
        """Mark a replica alive for ``ttl`` seconds; return how many replicas are alive."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""
        ...

    async def now(self) -> float:
        """The store's clock, epoch seconds."""
        ...

    async def pools(self) -> list[str]:
        """Pools that saw an acquire within the window TTL."""
        ...

    async def read_window(self, pool: str, window: int) -> dict[str, int]:
        """The counts of one window (demand and peak_concurrency included); {} if none."""
        ...

    async def load_state(self, pool: str) -> dict[str, str] | None:
        """The pool's saved controller state, or None."""
        ...

    async def save_state(self, pool: str, fields: Mapping[str, str]) -> None:
        """Save controller state; ``rate`` and ``concurrency`` take effect on the next acquire."""
        ...

    async def load_bounds(self, pool: str) -> dict[str, str]:
        """Bounds an operator set for a pool (PUT /bounds); {} if none."""
        ...

    async def save_bounds(self, pool: str, fields: Mapping[str, str]) -> None:
        """Replace a pool's bounds. Kept apart from the state, so that a controller step
        (which replaces the state) can never overwrite them, and a reset keeps them."""
        ...

    async def replicas(self, pool: str) -> int:
        """How many replicas are alive in a pool (by heartbeat)."""
        ...

    async def reset(self, pool: str) -> None:
        """Forget a pool's learned state and reservations (admin reset)."""
        ...

    async def lead(self, node: str, ttl: float) -> bool:
        """Take or renew the leader lease for ``ttl`` seconds; True while ``node`` holds it."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
