"""The limiter store in one process's memory (``REDIS_URL`` unset).

The same semantics as the Redis store, in plain Python on an injectable clock. Every method
runs to completion without awaiting, so on one event loop each call is atomic, as a Lua
script is on Redis: no locks. Memory stays bounded: expired ticks, leases, replicas,
state and idle pools are swept at most once per REGISTER_SECONDS.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from zai_proxy.limiter import store as s
from zai_proxy.limiter.store import (
    CONCURRENCY_RETRY_SECONDS,
    DAY_SECONDS,
    FAIR_HORIZON_SECONDS,
    MINUTE_SECONDS,
    REGISTER_SECONDS,
    STATE_TTL_SECONDS,
    WAITING_SECONDS,
    Admission,
    Claim,
    Flow,
    StoreConfig,
    check_parking,
    count_flows,
    flow_of,
    over_share,
    parse_cap,
    parse_rate,
    pushed_cap,
    state_version,
    utc_day,
)


@dataclass(slots=True)
class _Tick:
    counts: dict[str, float] = field(default_factory=dict)
    expiry: float = 0.0


@dataclass(slots=True)
class _Pool:
    state: dict[str, str] | None = None
    state_expiry: float = 0.0
    tat: float = 0.0  # a TAT in the past means the same as none
    tat_rate: float = 0.0  # the rate the backlog behind the TAT was laid out at
    leases: dict[str, float] = field(default_factory=dict)  # lease id -> expiry
    replicas: dict[str, float] = field(default_factory=dict)  # replica -> expiry
    ticks: dict[int, _Tick] = field(default_factory=dict)
    seen: float = -math.inf  # last acquire, for pools()
    parked: s.Parking | None = None
    waiters: dict[str, float] = field(default_factory=dict)  # lease id -> waiting until
    queued: dict[str, float] = field(default_factory=dict)  # a claim's lease id -> send time

    def drop_expired_leases(self, now: float) -> None:
        self.leases = {lease: end for lease, end in self.leases.items() if end > now}

    def drop_expired_waiters(self, now: float) -> None:
        self.waiters = {lease: end for lease, end in self.waiters.items() if end > now}

    def drop_sent(self, now: float) -> None:
        self.queued = {lease: at for lease, at in self.queued.items() if at > now}

    def drop_expired(self, now: float, ttl: float) -> None:
        self.drop_expired_leases(now)
        self.drop_expired_waiters(now)
        self.drop_sent(now)
        self.replicas = {name: end for name, end in self.replicas.items() if end > now}
        self.ticks = {index: t for index, t in self.ticks.items() if t.expiry > now}
        if self.state is not None and self.state_expiry <= now:
            self.state = None
        if self.seen < now - ttl:
            self.seen = -math.inf
        if self.parked is not None and self.parked.until <= now:
            self.parked = None

    def is_empty(self, now: float) -> bool:
        return not (
            self.state is not None
            or self.tat > now
            or self.leases
            or self.replicas
            or self.ticks
            or self.seen > -math.inf
            or self.parked is not None
            or self.waiters
            or self.queued
        )

    def parking(self, now: float) -> s.Parking | None:
        parked = self.parked
        return parked if parked is not None and parked.until > now else None

    def live_state(self, now: float) -> dict[str, str]:
        if self.state is None or self.state_expiry <= now:
            return {}
        return self.state


@dataclass(slots=True)
class _Client:
    """A client's budget state (as its ``{client:<alias>}`` keys on Redis)."""

    rpm_tat: float = 0.0
    leases: dict[str, float] = field(default_factory=dict)  # "<pool> <lease>" -> expiry
    tokens: dict[int, int] = field(default_factory=dict)  # UTC day -> tokens

    def drop_expired(self, now: float) -> None:
        self.leases = {lease: end for lease, end in self.leases.items() if end > now}
        today = utc_day(now)
        self.tokens = {day: n for day, n in self.tokens.items() if day >= today - 1}

    def is_empty(self, now: float) -> bool:
        return self.rpm_tat <= now and not self.leases and not self.tokens


class MemoryStore:
    """The limiter store for one process, on an injectable clock."""

    def __init__(self, config: StoreConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._pools: dict[str, _Pool] = {}
        self._clients: dict[str, _Client] = {}
        self._bounds: dict[str, dict[str, str]] = {}  # operator configuration: never expires
        self._leader: tuple[str, float] | None = None  # node, expiry
        self._next_sweep = -math.inf
        # Pool -> a queue per listener of ``freed``.
        self._listeners: dict[str, list[asyncio.Queue[int]]] = {}

    @property
    def footprint(self) -> int:
        """How many entries the store holds (pools, ticks, leases, replicas): for tests."""
        pools = sum(
            1 + len(p.ticks) + len(p.leases) + len(p.replicas) + len(p.waiters) + len(p.queued)
            for p in self._pools.values()
        )
        return pools + sum(1 + len(c.leases) + len(c.tokens) for c in self._clients.values())

    async def acquire(
        self,
        pool: str,
        lease: str,
        max_wait: float,
        lease_ttl: float,
        claim: Claim | None = None,
    ) -> Admission:
        """Reserve a slot and a lease, unless the wait exceeds max_wait (as acquire.lua)."""
        if max_wait < 0 or lease_ttl <= 0:
            raise ValueError("max_wait must be >= 0 and lease_ttl > 0")
        now = self._clock()
        self._maybe_sweep(now)
        state = self._pool(pool)
        state.seen = now
        saved = state.live_state(now)
        rate = parse_rate(saved.get(s.RATE), self.config.initial_rate)
        cap = parse_cap(saved.get(s.CONCURRENCY))
        epoch = int(saved.get(s.EPOCH) or 0)
        parked = state.parking(now)
        if parked is not None:
            # Refused before anything else (see acquire.lua).
            wait = parked.until - now
            held = len(state.leases)
            return Admission(False, wait, "parked", rate, cap, held, epoch, now, parked.reason)
        client: _Client | None = None
        rpm_tat = 0.0
        if claim is not None and claim.budgets:
            # The client's budgets (see acquire.lua).
            budgets = claim.budgets
            client = self._client(claim.client)
            refusal = ""
            wait = 0.0
            if budgets.tokens_per_day is not None:
                day = utc_day(now)
                if client.tokens.get(day, 0) >= budgets.tokens_per_day:
                    refusal, wait = "tokens_per_day", (day + 1) * DAY_SECONDS - now
            if not refusal and budgets.concurrent is not None:
                client.drop_expired(now)
                if len(client.leases) >= budgets.concurrent:
                    refusal, wait = "concurrent", min(1.0, min(client.leases.values()) - now)
            if not refusal and budgets.rpm is not None and claim.charge:
                interval = MINUTE_SECONDS / budgets.rpm
                rpm_tat = max(client.rpm_tat, now)
                ahead = rpm_tat - (MINUTE_SECONDS - interval) - now
                if ahead > 0:
                    refusal, wait = "rpm", ahead
                rpm_tat += interval
            if refusal:
                held = len(state.leases)
                return Admission(False, wait, "budget", rate, cap, held, epoch, now, budget=refusal)
        burst = self.config.burst_seconds
        if state.tat > now and 0 < state.tat_rate != rate and math.isfinite(rate):
            # The backlog waits at the rate in force (see acquire.lua).
            last = state.tat - burst - 1 / state.tat_rate
            if last > now:
                last = now + min((last - now) * state.tat_rate / rate, max_wait)
                state.tat, state.tat_rate = last + burst + 1 / rate, rate

        # A lease past its expiry belongs to a proxy that crashed or lost its report.
        state.drop_expired_leases(now)
        in_flight = len(state.leases)
        flow = "" if claim is None else claim.flow
        if cap is not None and in_flight >= cap:
            wait = min(CONCURRENCY_RETRY_SECONDS, min(state.leases.values()) - now)
            self._wait(state, claim, lease, now)
            return Admission(False, wait, "concurrency", rate, cap, in_flight, epoch, now)
        if cap is not None and flow:
            # The fair share of the cap, weighed while another request waits (acquire.lua).
            state.drop_expired_waiters(now)
            state.waiters.pop(lease, None)
            if state.waiters and over_share(flow, *_counts(state.leases, state, flow), cap):
                self._wait(state, claim, lease, now)
                wait = CONCURRENCY_RETRY_SECONDS
                return Admission(False, wait, "share", rate, cap, in_flight, epoch, now)

        wait = 0.0
        if math.isfinite(rate):
            tat = max(state.tat, now)
            wait = max(0.0, tat - burst - now)
            if wait > max_wait:
                return Admission(False, wait, "rate", rate, cap, in_flight, epoch, now)
            if flow:
                # The fair share of the rate's backlog (acquire.lua).
                state.drop_sent(now)
                if wait > FAIR_HORIZON_SECONDS:
                    self._wait(state, claim, lease, now)
                    refused = wait - FAIR_HORIZON_SECONDS
                    return Admission(False, refused, "queue", rate, cap, in_flight, epoch, now)
                state.drop_expired_waiters(now)
                state.waiters.pop(lease, None)
                slots = max(1, math.floor(FAIR_HORIZON_SECONDS * rate))
                counts = _counts(state.queued, state, flow)
                if state.waiters and over_share(flow, *counts, slots):
                    self._wait(state, claim, lease, now)
                    return Admission(False, 1 / rate, "queue", rate, cap, in_flight, epoch, now)
                if wait > 0:
                    state.queued[lease] = now + wait
            state.tat, state.tat_rate = tat + 1 / rate, rate
        else:
            state.tat, state.tat_rate = 0.0, 0.0
        state.leases[lease] = now + lease_ttl
        if client is not None and claim is not None:
            if claim.budgets.concurrent is not None:
                client.leases[f"{pool} {lease}"] = now + lease_ttl
            if claim.budgets.rpm is not None and claim.charge:
                client.rpm_tat = rpm_tat
        return Admission(True, wait, "ok", rate, cap, in_flight + 1, epoch, now)

    @staticmethod
    def _wait(state: _Pool, claim: Claim | None, lease: str, now: float) -> None:
        """A refused request that will ask again waits until then (acquire.lua)."""
        if claim is not None and claim.queue:
            state.waiters[lease] = now + WAITING_SECONDS

    async def report(
        self,
        pool: str,
        ticks: Mapping[int, Mapping[str, float]],
        release: Sequence[str] = (),
        tokens: Mapping[str, int] | None = None,
    ) -> None:
        """Add tick counts, release leases, count tokens, and push (as report.lua)."""
        now = self._clock()
        self._maybe_sweep(now)
        today = utc_day(now)
        for client, n in (tokens or {}).items():
            if n > 0:
                spent = self._client(client).tokens
                spent[today] = spent.get(today, 0) + int(n)
        if not ticks and not release:
            return
        state = self._pool(pool)
        limited = concurrency_limited = False
        refused_at: int | None = None
        for index, counts in ticks.items():
            held = state.ticks.setdefault(index, _Tick())
            held.expiry = now + self.config.tick_ttl_seconds
            for name, value in counts.items():
                if name in s.MAX_FIELDS:
                    held.counts[name] = max(held.counts.get(name, value), value)
                elif name in s.MIN_FIELDS:
                    held.counts[name] = min(held.counts.get(name, value), value)
                    if name == "refused_at":
                        n = int(value)
                        refused_at = n if refused_at is None else min(refused_at, n)
                elif value:
                    held.counts[name] = held.counts.get(name, 0) + value
            limited = limited or counts.get("rate_frequency", 0) > 0
            concurrency_limited = concurrency_limited or counts.get("rate_concurrency", 0) > 0
        freed = sum(1 for lease in release if state.leases.pop(lease, None) is not None)
        for lease in release:
            state.waiters.pop(lease, None)
            owner = self._clients.get(flow_of(lease).rpartition(":")[2])
            if owner is not None:
                owner.leases.pop(f"{pool} {lease}", None)
        saved = state.live_state(now)
        if saved and (limited or concurrency_limited):
            _push(saved, now, limited, concurrency_limited, refused_at)
        elif not saved and concurrency_limited and refused_at is not None:
            # A new pool's first 1302 caps it all the same (see report.lua).
            cap = str(max(1, refused_at - 1))
            fields = {s.CONCURRENCY: cap, s.EPOCH: "1", s.PUSHED_CAP: repr(now), s.VERSION: "1"}
            state.state, state.state_expiry = fields, now + STATE_TTL_SECONDS
            saved = fields
        if freed and parse_cap(saved.get(s.CONCURRENCY)) is not None:
            self._announce(pool, freed)

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
                client = self._clients.get(flow_of(lease).rpartition(":")[2])
                name = f"{pool} {lease}"
                if client is not None and client.leases.get(name, -math.inf) > now:
                    client.leases[name] = now + ttl
        return renewed

    async def flows(self, pool: str) -> list[Flow]:
        """The pool's flows now, counted from its leases and waiters."""
        state = self._pools.get(pool)
        if state is None:
            return []
        now = self._clock()
        leases = [lease for lease, end in state.leases.items() if end > now]
        return count_flows(leases, [lease for lease, end in state.waiters.items() if end > now])

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

    async def freed(self, pool: str) -> AsyncIterator[int]:
        """Slots freed in ``pool`` (as the Redis store publishes them)."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        listeners = self._listeners.setdefault(pool, [])
        listeners.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            listeners.remove(queue)
            if not listeners:
                del self._listeners[pool]

    async def park(self, pool: str, seconds: float, reason: str) -> s.Parking:
        """Park a pool; the later end wins (as park.lua)."""
        check_parking(seconds, reason)
        now = self._clock()
        state = self._pool(pool)
        held = state.parking(now)
        if held is None or held.until < now + seconds:
            held = state.parked = s.Parking(now + seconds, reason, now)
        return held

    async def lift(self, pool: str) -> bool:
        """End a pool's parking now."""
        state = self._pools.get(pool)
        if state is None:
            return False
        held = state.parking(self._clock()) is not None
        state.parked = None
        return held

    async def parking(self, pool: str) -> s.Parking | None:
        """The pool's parking in force, or None."""
        state = self._pools.get(pool)
        return None if state is None else state.parking(self._clock())

    async def ping(self) -> None:
        """Always answers: the store is this process."""

    async def now(self) -> float:
        """The injected clock, epoch seconds."""
        return self._clock()

    async def pools(self) -> list[str]:
        """Pools that saw an acquire within the tick TTL."""
        oldest = self._clock() - self.config.tick_ttl_seconds
        return sorted(name for name, state in self._pools.items() if state.seen >= oldest)

    async def read_ticks(self, pool: str, first: int, last: int) -> dict[int, dict[str, float]]:
        """The counts of ticks ``first`` to ``last`` that hold any."""
        state = self._pools.get(pool)
        if state is None:
            return {}
        now = self._clock()
        return {
            index: dict(held.counts)
            for index, held in state.ticks.items()
            if first <= index <= last and held.expiry > now and held.counts
        }

    async def load_state(self, pool: str) -> dict[str, str] | None:
        """The pool's saved state, or None."""
        state = self._pools.get(pool)
        if state is None:
            return None
        return dict(state.live_state(self._clock())) or None

    async def save_state(self, pool: str, fields: Mapping[str, str], version: int) -> bool:
        """Replace the state unless its version moved past ``version`` (as save.lua)."""
        state = self._pool(pool)
        now = self._clock()
        held = state.live_state(now)
        if state_version(held) != version:
            return False
        old_cap = parse_cap(held.get(s.CONCURRENCY))
        state.state = {**fields, s.VERSION: str(version + 1)}
        state.state_expiry = now + STATE_TTL_SECONDS
        new_cap = parse_cap(fields.get(s.CONCURRENCY))
        if old_cap is not None and (new_cap is None or new_cap > old_cap):
            self._announce(pool, s.ALL_SLOTS if new_cap is None else new_cap - old_cap)
        return True

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
        """Forget the pool's saved state, its TAT and its leases (ticks and replicas stay);
        every waiter may go."""
        state = self._pools.get(pool)
        if state is not None:
            state.state = None
            state.tat = state.tat_rate = 0.0
            state.leases.clear()
            state.waiters.clear()
            state.queued.clear()
        self._announce(pool, s.ALL_SLOTS)

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

    def _announce(self, pool: str, slots: int) -> None:
        for queue in self._listeners.get(pool, ()):
            queue.put_nowait(slots)

    def _client(self, client: str) -> _Client:
        held = self._clients.get(client)
        if held is None:
            held = self._clients[client] = _Client()
        return held

    def _pool(self, pool: str) -> _Pool:
        state = self._pools.get(pool)
        if state is None:
            state = self._pools[pool] = _Pool()
        return state

    def _maybe_sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + REGISTER_SECONDS
        ttl = self.config.tick_ttl_seconds
        for name in list(self._pools):
            state = self._pools[name]
            state.drop_expired(now, ttl)
            if state.is_empty(now):
                del self._pools[name]
        for name in list(self._clients):
            client = self._clients[name]
            client.drop_expired(now)
            if client.is_empty(now):
                del self._clients[name]
        if self._leader is not None and self._leader[1] <= now:
            self._leader = None


def _counts(
    holding: Mapping[str, float], state: _Pool, flow: str
) -> tuple[dict[str, int], dict[str, int]]:
    """Every flow's holdings (leases, or reservations ahead) and requests waiting, the
    asking request (of ``flow``) counted as waiting (acquire.lua)."""
    held: dict[str, int] = {}
    for lease in holding:
        name = flow_of(lease)
        held[name] = held.get(name, 0) + 1
    waiting = {flow: 1}
    for lease in state.waiters:
        name = flow_of(lease)
        waiting[name] = waiting.get(name, 0) + 1
    return held, waiting


def _push(
    saved: dict[str, str],
    now: float,
    limited: bool,
    concurrency_limited: bool,
    refused_at: int | None,
) -> None:
    """End the probes a 429 answered, and lower the cap below a 1302 (as report.lua)."""
    changed = False
    if limited and saved.get(s.PROBE_BASE):
        saved[s.RATE] = saved[s.PROBE_BASE]
        saved[s.PROBE_BASE] = ""
        saved[s.PUSHED_RATE] = repr(now)
        changed = True
    if concurrency_limited:
        base = parse_cap(saved.get(s.CAP_BASE))
        floor = int(saved.get(s.CAP_FLOOR) or 1)
        cap = pushed_cap(parse_cap(saved.get(s.CONCURRENCY)), base, refused_at, floor)
        if cap is not None:
            saved[s.CONCURRENCY] = str(cap)
            saved[s.CAP_BASE] = ""
            saved[s.EPOCH] = str(int(saved.get(s.EPOCH) or 0) + 1)
            saved[s.PUSHED_CAP] = repr(now)
            changed = True
    if changed:
        saved[s.VERSION] = str(state_version(saved) + 1)
