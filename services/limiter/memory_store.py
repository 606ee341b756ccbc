"""The limiter store in one process's memory (``REDIS_URL`` unset).

The same semantics as the Redis store, in plain Python on an injectable clock. Every method
runs to completion without awaiting, so on one event loop each call is atomic, as a Lua
script is on Redis: no locks. Memory stays bounded: expired windows, leases, replicas,
state and idle pools are swept at most once per window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from zai_proxy.limiter.store import (
    CONCURRENCY_RETRY_SECONDS,
    STATE_TTL_SECONDS,
    Admission,
    StoreConfig,
)


@dataclass(slots=True)
class _Window:
    counts: dict[str, int] = field(default_factory=dict)
    expiry: float = 0.0


@dataclass(slots=True)
class _Pool:
    state: dict[str, str] | None = None
    state_expiry: float = 0.0
    tat: float = 0.0  # a TAT in the past means the same as none
    tat_rate: float = 0.0  # the rate the backlog behind the TAT was laid out at
    leases: dict[str, float] = field(default_factory=dict)  # lease id -> expiry
    replicas: dict[str, float] = field(default_factory=dict)  # replica -> expiry
    windows: dict[int, _Window] = field(default_factory=dict)
    seen: float = -math.inf  # last acquire, for pools()

    def drop_expired_leases(self, now: float) -> None:
        self.leases = {lease: end for lease, end in self.leases.items() if end > now}

    def drop_expired(self, now: float, window_ttl: float) -> None:
        self.drop_expired_leases(now)
        self.replicas = {name: end for name, end in self.replicas.items() if end > now}
        self.windows = {index: w for index, w in self.windows.items() if w.expiry > now}
        if self.state is not None and self.state_expiry <= now:
            self.state = None
        if self.seen < now - window_ttl:
            self.seen = -math.inf

    def is_empty(self, now: float) -> bool:
        return not (
            self.state is not None
            or self.tat > now
            or self.leases
            or self.replicas
            or self.windows
            or self.seen > -math.inf
        )


class MemoryStore:
    """The limiter store for one process, on an injectable clock."""

    def __init__(self, config: StoreConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._pools: dict[str, _Pool] = {}
        self._bounds: dict[str, dict[str, str]] = {}  # operator configuration: never expires
        self._leader: tuple[str, float] | None = None  # node, expiry
        self._next_sweep = -math.inf

    @property
    def footprint(self) -> int:
        """How many entries the store holds (pools, windows, leases, replicas): for tests."""
        return sum(
            1 + len(p.windows) + len(p.leases) + len(p.replicas) for p in self._pools.values()
        )

    async def acquire(
        self, pool: str, lease: str, max_wait: float, lease_ttl: float, demand: bool = True
    ) -> Admission:
        """Reserve a slot and a lease, unless the wait exceeds max_wait (as acquire.lua)."""
        if max_wait < 0 or lease_ttl <= 0:
            raise ValueError("max_wait must be >= 0 and lease_ttl > 0")
        now = self._clock()
        self._maybe_sweep(now)
        state = self._pool(pool)
        state.seen = now
        rate, cap = self._limits(state, now)
        window = self._window(state, now)
        if demand:
            window.counts["demand"] = window.counts.get("demand", 0) + 1
        burst = self.config.burst_seconds
        if state.tat > now and 0 < state.tat_rate != rate:
            # The backlog waits at the rate in force (see acquire.lua).
            last = state.tat - burst - 1 / state.tat_rate
            if last > now:
                last = now + min((last - now) * state.tat_rate / rate, max_wait)
                state.tat, state.tat_rate = last + burst + 1 / rate, rate

        # A lease past its expiry belongs to a proxy that crashed or lost its report.
        state.drop_expired_leases(now)
        in_flight = len(state.leases)
        if in_flight >= cap:
            _record_peak(window, in_flight)
            wait = min(CONCURRENCY_RETRY_SECONDS, min(state.leases.values()) - now)
            return Admission(False, wait, "concurrency", rate, cap, now)

        tat = max(state.tat, now)
        wait = max(0.0, tat - burst - now)
        if wait > max_wait:
            _record_peak(window, in_flight)
            return Admission(False, wait, "rate", rate, cap, now)
        state.tat, state.tat_rate = tat + 1 / rate, rate
        state.leases[lease] = now + lease_ttl
        _record_peak(window, len(state.leases))
        return Admission(True, wait, "ok", rate, cap, now)

    async def report(
        self, pool: str, window: int, counts: Mapping[str, int], release: Sequence[str] = ()
    ) -> None:
        """Add outcome counts to a window and release leases."""
        now = self._clock()
        self._maybe_sweep(now)
        nonzero = [(name, count) for name, count in counts.items() if count]
        if not nonzero and not release:
            return
        state = self._pool(pool)
        if nonzero:
            held = state.windows.setdefault(window, _Window())
            held.expiry = now + self.config.window_ttl_seconds
            for name, count in nonzero:
                held.counts[name] = held.counts.get(name, 0) + count
        for lease in release:
            state.leases.pop(lease, None)

    async def renew(self, pool: str, leases: Sequence[str], ttl: float) -> int:
        """Extend leases still held to expire ``ttl`` seconds from now (as renew.lua)."""
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        state = self._pools.get(pool)
        if state is None or not leases:
            return 0
        now = self._clock()
        state.drop_expired_leases(now)
        renewed = 0
        for lease in leases:
            if lease in state.leases:
                state.leases[lease] = now + ttl
                renewed += 1
        return renewed

    async def heartbeat(self, pool: str, replica: str, ttl: float) -> int:
        """Mark a replica alive for ``ttl`` seconds; return how many replicas are alive."""
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        now = self._clock()
        self._maybe_sweep(now)
        state = self._pool(pool)
        state.replicas = {name: end for name, end in state.replicas.items() if end > now}
        state.replicas[replica] = now + ttl
        return len(state.replicas)

    async def ping(self) -> None:
        """Always answers: the store is this process."""

    async def now(self) -> float:
        """The injected clock, epoch seconds."""
        return self._clock()

    async def pools(self) -> list[str]:
        """Pools that saw an acquire within the window TTL."""
        oldest = self._clock() - self.config.window_ttl_seconds
        return sorted(name for name, state in self._pools.items() if state.seen >= oldest)

    async def read_window(self, pool: str, window: int) -> dict[str, int]:
        """The counts of one window; only fields ever written are present."""
        state = self._pools.get(pool)
        held = state.windows.get(window) if state else None
        if held is None or held.expiry <= self._clock():
            return {}
        return dict(held.counts)

    async def load_state(self, pool: str) -> dict[str, str] | None:
        """The pool's saved controller state, or None."""
        state = self._pools.get(pool)
        if state is None or state.state is None or state.state_expiry <= self._clock():
            return None
        return dict(state.state)

    async def save_state(self, pool: str, fields: Mapping[str, str]) -> None:
        """Replace the saved state with ``fields`` (a field left out does not linger)."""
        state = self._pool(pool)
        state.state = dict(fields) or None
        state.state_expiry = self._clock() + STATE_TTL_SECONDS

    async def load_bounds(self, pool: str) -> dict[str, str]:
        """Bounds an operator set for a pool; {} if none."""
        return dict(self._bounds.get(pool, {}))

    async def save_bounds(self, pool: str, fields: Mapping[str, str]) -> None:
        """Replace a pool's bounds."""
        if fields:
            self._bounds[pool] = dict(fields)
        else:
            self._bounds.pop(pool, None)

    async def replicas(self, pool: str) -> int:
        """How many replicas have a heartbeat that has not expired."""
        state = self._pools.get(pool)
        now = self._clock()
        return sum(1 for end in state.replicas.values() if end > now) if state else 0

    async def reset(self, pool: str) -> None:
        """Forget the pool's saved state, its TAT and its leases (windows and replicas stay)."""
        state = self._pools.get(pool)
        if state is not None:
            state.state = None
            state.tat = state.tat_rate = 0.0
            state.leases.clear()

    async def lead(self, node: str, ttl: float) -> bool:
        """Take or renew the leader lease for ``ttl`` seconds; True while ``node`` holds it."""
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        now = self._clock()
        if self._leader is None or self._leader[1] <= now or self._leader[0] == node:
            self._leader = (node, now + ttl)
            return True
        return False

    async def close(self) -> None:
        """Nothing to release."""

    def _pool(self, pool: str) -> _Pool:
        state = self._pools.get(pool)
        if state is None:
            state = self._pools[pool] = _Pool()
        return state

    def _limits(self, state: _Pool, now: float) -> tuple[float, int]:
        """The pool's rate and cap: saved state wins, as in acquire.lua."""
        rate = float(self.config.initial_rate)
        cap = self.config.initial_concurrency
        if state.state is not None and state.state_expiry > now:
            saved_rate = _number(state.state.get("rate"))
            if saved_rate is not None and 0 < saved_rate < math.inf:
                rate = saved_rate
            saved_cap = _number(state.state.get("concurrency"))
            if saved_cap is not None and -math.inf < saved_cap < math.inf:
                cap = max(1, math.floor(saved_cap))
        return rate, cap

    def _window(self, state: _Pool, now: float) -> _Window:
        held = state.windows.setdefault(self.config.window_of(now), _Window())
        held.expiry = now + self.config.window_ttl_seconds
        return held

    def _maybe_sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.config.window_seconds
        ttl = self.config.window_ttl_seconds
        for name in list(self._pools):
            state = self._pools[name]
            state.drop_expired(now, ttl)
            if state.is_empty(now):
                del self._pools[name]
        if self._leader is not None and self._leader[1] <= now:
            self._leader = None


def _record_peak(window: _Window, in_flight: int) -> None:
    if in_flight > window.counts.get("peak_concurrency", -1):
        window.counts["peak_concurrency"] = in_flight


def _number(text: str | None) -> float | None:
    """A saved field as a number; None when missing, not a number or NaN."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value
