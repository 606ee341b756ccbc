"""The limiter store on Redis: shared by every proxy and limiter replica.

The hot path is one round trip: ``acquire`` is one Lua script (``acquire.lua``) run by
EVALSHA, on Redis's own clock. The key schema is in ``keys``; the scripts sit beside this
module. Redis errors are translated here, at the edge: anything that means "cannot reach
Redis now" becomes ``StoreUnavailable``, the rest ``StoreError``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from importlib import resources
from types import TracebackType
from typing import Literal, cast

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from zai_proxy.limiter import keys
from zai_proxy.limiter import store as s
from zai_proxy.limiter.store import (
    CONCURRENCY_RETRY_SECONDS,
    FAIR_HORIZON_SECONDS,
    REGISTER_SECONDS,
    STATE_TTL_SECONDS,
    WAITING_SECONDS,
    Admission,
    Claim,
    Flow,
    Parking,
    StoreConfig,
    StoreError,
    StoreUnavailable,
    check_parking,
    count_flows,
    parse_cap,
)

# Hot-path timeouts: a Redis that cannot answer within this is treated as down, and the
# proxy falls back to its local limiter rather than holding requests.
DEFAULT_SOCKET_TIMEOUT = 0.25
DEFAULT_CONNECT_TIMEOUT = 0.25
# PING a connection idle for longer before reusing it, so a connection that a restart or
# a load balancer dropped is found before it costs a request.
DEFAULT_HEALTH_CHECK_INTERVAL = 15.0
DEFAULT_MAX_CONNECTIONS = 64
# A listener on the freed channel reads with this timeout, so a dropped subscription is
# found (and the health check runs) even while nothing is published.
FREED_READ_SECONDS = 1.0

# Errors that say "Redis cannot serve us now": a refused or broken connection, a timeout,
# a replica still loading its data set, a former primary that became a read-only replica
# in a failover, a cluster without a primary for the slot.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    OSError,  # includes the built-in TimeoutError
)

_Reason = Literal["ok", "rate", "concurrency", "parked", "share", "queue", "budget"]
_REASON_NAMES: tuple[_Reason, ...] = (
    "ok",
    "rate",
    "concurrency",
    "parked",
    "share",
    "queue",
    "budget",
)
_REASONS: dict[bytes | str, _Reason] = {
    **{name: name for name in _REASON_NAMES},
    **{name.encode(): name for name in _REASON_NAMES},
}


def _script(name: str) -> str:
    return resources.files(__name__.rpartition(".")[0]).joinpath(name).read_text(encoding="utf-8")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _TranslateErrors:
    """Re-raise redis-py's errors as store errors (a class: cheaper than a generator CM)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, StoreError):
            return
        if isinstance(exc, _UNAVAILABLE):
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc
        if isinstance(exc, redis_errors.RedisError):
            raise StoreError(f"Redis failed: {exc}") from exc


_translate_errors = _TranslateErrors()


class RedisStore:
    """The limiter store on Redis (or anything speaking its protocol, such as fakeredis)."""

    def __init__(self, redis: Redis, config: StoreConfig, *, owns_client: bool = False) -> None:
        self.config = config
        self._redis = redis
        self._owns_client = owns_client
        self._acquire = redis.register_script(_script("acquire.lua"))
        self._report = redis.register_script(_script("report.lua"))
        self._save = redis.register_script(_script("save.lua"))
        self._register = redis.register_script(_script("register.lua"))
        self._pools = redis.register_script(_script("pools.lua"))
        self._heartbeat = redis.register_script(_script("heartbeat.lua"))
        self._renew = redis.register_script(_script("renew.lua"))
        self._replicas = redis.register_script(_script("replicas.lua"))
        self._lead = redis.register_script(_script("lead.lua"))
        self._park = redis.register_script(_script("park.lua"))
        self._pools_key = keys.pools_key(config.prefix)
        self._clients_prefix = keys.clients_prefix(config.prefix)
        self._leader_key = keys.leader_key(config.prefix)
        self._tick_ttl_ms = _millis(config.tick_ttl_seconds)
        # Pool -> monotonic time of its next registration (see the keys module docstring).
        self._next_registration: dict[str, float] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        config: StoreConfig,
        *,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        health_check_interval: float = DEFAULT_HEALTH_CHECK_INTERVAL,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> RedisStore:
        """Connect lazily to ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            # Waiting for a free connection is part of the same budget as the command.
            timeout=socket_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            health_check_interval=health_check_interval,
            # One retry, on a broken connection only: a stale pooled socket should not cost
            # a request. Never on a timeout: the script may have run, and a slow Redis must
            # send proxies to their local limiter fast.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,)),
        )
        return cls(Redis.from_pool(pool), config, owns_client=True)

    async def acquire(
        self,
        pool: str,
        lease: str,
        max_wait: float,
        lease_ttl: float,
        claim: Claim | None = None,
    ) -> Admission:
        """Reserve a slot and a lease in one script run, unless the wait exceeds max_wait."""
        if max_wait < 0 or lease_ttl <= 0:
            raise ValueError("max_wait must be >= 0 and lease_ttl > 0")
        pool_keys = keys.pool_keys(self.config.prefix, pool)
        config = self.config
        claimed: tuple[str | int, ...] = ("", 0, 0, "", "", "", "")
        if claim is not None:
            budgets = claim.budgets
            claimed = (
                claim.flow,
                int(claim.queue),
                int(claim.charge),
                keys.client_base(config.prefix, claim.client) if budgets else "",
                "" if budgets.rpm is None else budgets.rpm,
                "" if budgets.concurrent is None else budgets.concurrent,
                "" if budgets.tokens_per_day is None else budgets.tokens_per_day,
            )
        with _translate_errors:
            if self._next_registration.get(pool, -math.inf) <= time.monotonic():
                await self._register_pool(pool)
            reply = await self._acquire(
                keys=(
                    pool_keys.state,
                    pool_keys.tat,
                    pool_keys.leases,
                    pool_keys.parked,
                    pool_keys.waiters,
                    pool_keys.queued,
                ),
                args=(
                    config.initial_rate,
                    config.burst_seconds,
                    max_wait,
                    lease,
                    lease_ttl,
                    CONCURRENCY_RETRY_SECONDS,
                    *claimed,
                    WAITING_SECONDS,
                    pool,
                    FAIR_HORIZON_SECONDS,
                ),
            )
        granted, reason, wait, rate, cap, in_flight, epoch, now, parked, budget = reply
        return Admission(
            granted=granted == 1,
            wait=float(wait),
            reason=_REASONS[reason],
            rate=float(rate),
            concurrency=parse_cap(_text(cap)),
            in_flight=int(in_flight),
            epoch=int(epoch),
            now=float(now),
            parked=_text(parked),
            budget=_text(budget),
        )

    async def report(
        self,
        pool: str,
        ticks: Mapping[int, Mapping[str, float]],
        release: Sequence[str] = (),
        tokens: Mapping[str, int] | None = None,
    ) -> None:
        """Add tick counts, release leases, count tokens and push, in one script run."""
        triples: list[str | int | float] = []
        for index, counts in ticks.items():
            for name, value in counts.items():
                if name in s.MAX_FIELDS or name in s.MIN_FIELDS or name in s.FLOAT_FIELDS:
                    triples += (index, name, repr(float(value)))
                elif value:
                    triples += (index, name, int(value))  # HINCRBY takes integers only
        spent = [(client, int(n)) for client, n in (tokens or {}).items() if n > 0]
        if not triples and not release and not spent:
            return
        pool_keys = keys.pool_keys(self.config.prefix, pool)
        with _translate_errors:
            await self._report(
                keys=(pool_keys.state, pool_keys.leases, pool_keys.waiters),
                args=(
                    pool_keys.tick_prefix,
                    self._tick_ttl_ms,
                    pool_keys.freed,
                    self._clients_prefix,
                    pool,
                    _millis(STATE_TTL_SECONDS),
                    len(release),
                    *release,
                    len(spent),
                    *(x for pair in spent for x in pair),
                    *triples,
                ),
            )

    async def renew(self, pool: str, leases: Sequence[str], ttl: float) -> int:
        """Extend leases still held to expire ``ttl`` seconds from now; return how many."""
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        if not leases:
            return 0
        leases_key = keys.pool_keys(self.config.prefix, pool).leases
        with _translate_errors:
            return int(
                await self._renew(
                    keys=(leases_key,), args=(ttl, self._clients_prefix, pool, *leases)
                )
            )

    async def flows(self, pool: str) -> list[Flow]:
        """The pool's flows now, counted from its leases and waiters in one pipelined trip."""
        pool_keys = keys.pool_keys(self.config.prefix, pool)
        with _translate_errors:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.zrange(pool_keys.leases, 0, -1, withscores=True)
                pipe.zrange(pool_keys.waiters, 0, -1, withscores=True)
                (seconds, micros), leases, waiters = await pipe.execute()
        now = seconds + micros / 1_000_000
        return count_flows(
            [_text(m) for m, end in leases if end > now],
            [_text(m) for m, end in waiters if end > now],
        )

    async def heartbeat(self, pool: str, replica: str, ttl: float) -> int:
        """Mark a replica alive for ``ttl`` seconds; return how many replicas are alive."""
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        replicas_key = keys.pool_keys(self.config.prefix, pool).replicas
        with _translate_errors:
            return int(await self._heartbeat(keys=(replicas_key,), args=(replica, ttl)))

    async def freed(self, pool: str) -> AsyncIterator[int]:
        """Slots freed in ``pool``, as report.lua, save.lua and reset publish them."""
        channel = keys.pool_keys(self.config.prefix, pool).freed
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            with _translate_errors:
                await pubsub.subscribe(channel)
            while True:
                with _translate_errors:
                    message = await pubsub.get_message(timeout=FREED_READ_SECONDS)
                if message is not None and message["type"] == "message":
                    yield int(message["data"])
        finally:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await pubsub.aclose()

    async def park(self, pool: str, seconds: float, reason: str) -> Parking:
        """Park a pool on Redis's clock (park.lua); the later end wins."""
        check_parking(seconds, reason)
        parked_key = keys.pool_keys(self.config.prefix, pool).parked
        with _translate_errors:
            ends, held_reason, since = await self._park(
                keys=(parked_key,), args=("inf" if math.isinf(seconds) else repr(seconds), reason)
            )
        return _parking(_text(ends), _text(held_reason), _text(since))

    async def lift(self, pool: str) -> bool:
        """End a pool's parking now."""
        parked_key = keys.pool_keys(self.config.prefix, pool).parked
        with _translate_errors:
            return bool(await self._redis.delete(parked_key))

    async def parking(self, pool: str) -> Parking | None:
        """The pool's parking in force, or None."""
        parked_key = keys.pool_keys(self.config.prefix, pool).parked
        with _translate_errors:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hmget(parked_key, ["until", "reason", "since"])
                pipe.time()
                (ends, reason, since), (seconds, micros) = await pipe.execute()
        if ends is None:
            return None
        held = _parking(_text(ends), _text(reason or b""), _text(since or b"0"))
        return held if held.until > seconds + micros / 1_000_000 else None

    async def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        with _translate_errors:
            await self._redis.ping()

    async def now(self) -> float:
        """Redis's clock, epoch seconds."""
        with _translate_errors:
            seconds, micros = await self._redis.time()
        return seconds + micros / 1_000_000

    async def pools(self) -> list[str]:
        """Pools that saw an acquire within the tick TTL (to within REGISTER_SECONDS)."""
        with _translate_errors:
            members = await self._pools(
                keys=(self._pools_key,), args=(self.config.tick_ttl_seconds,)
            )
        return [_text(member) for member in members]

    async def read_ticks(self, pool: str, first: int, last: int) -> dict[int, dict[str, float]]:
        """The counts of ticks ``first`` to ``last`` that hold any, in one pipelined trip."""
        if last < first:
            return {}
        pool_keys = keys.pool_keys(self.config.prefix, pool)
        indices = range(first, last + 1)
        with _translate_errors:
            async with self._redis.pipeline(transaction=False) as pipe:
                for index in indices:
                    pipe.hgetall(pool_keys.tick(index))
                replies = await pipe.execute()
        return {
            index: {_text(name): float(value) for name, value in fields.items()}
            for index, fields in zip(indices, replies, strict=True)
            if fields
        }

    async def load_state(self, pool: str) -> dict[str, str] | None:
        """The pool's saved state, or None."""
        state_key = keys.pool_keys(self.config.prefix, pool).state
        with _translate_errors:
            fields = await self._redis.hgetall(state_key)
        return {_text(name): _text(value) for name, value in fields.items()} or None

    async def save_state(self, pool: str, fields: Mapping[str, str], version: int) -> bool:
        """Replace the state unless its version moved past ``version`` (save.lua)."""
        pool_keys = keys.pool_keys(self.config.prefix, pool)
        pairs = [x for item in fields.items() if item[0] != "version" for x in item]
        ttl = _millis(STATE_TTL_SECONDS)
        with _translate_errors:
            saved = await self._save(
                keys=(pool_keys.state,), args=(version, ttl, pool_keys.freed, s.ALL_SLOTS, *pairs)
            )
        return cast(int, saved) == 1

    async def load_bounds(self, pool: str) -> dict[str, str]:
        """Bounds an operator set for a pool; {} if none."""
        bounds_key = keys.pool_keys(self.config.prefix, pool).bounds
        with _translate_errors:
            fields = await self._redis.hgetall(bounds_key)
        return {_text(name): _text(value) for name, value in fields.items()}

    async def save_bounds(self, pool: str, fields: Mapping[str, str]) -> None:
        """Replace a pool's bounds."""
        bounds_key = keys.pool_keys(self.config.prefix, pool).bounds
        with _translate_errors:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(bounds_key)
                if fields:
                    pipe.hset(bounds_key, items=[x for item in fields.items() for x in item])
                await pipe.execute()

    async def replicas(self, pool: str) -> int:
        """How many replicas have a heartbeat that has not expired."""
        replicas_key = keys.pool_keys(self.config.prefix, pool).replicas
        with _translate_errors:
            return int(await self._replicas(keys=(replicas_key,)))

    async def reset(self, pool: str) -> None:
        """Forget the pool's saved state, its TAT and its leases (ticks and replicas stay);
        every waiter may go."""
        pool_keys = keys.pool_keys(self.config.prefix, pool)
        with _translate_errors:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(
                    pool_keys.state,
                    pool_keys.tat,
                    pool_keys.leases,
                    pool_keys.waiters,
                    pool_keys.queued,
                )
                pipe.publish(pool_keys.freed, s.ALL_SLOTS)
                await pipe.execute()

    async def lead(self, node: str, ttl: float) -> bool:
        """Take or renew the leader lease for ``ttl`` seconds; True while ``node`` holds it."""
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        with _translate_errors:
            held = await self._lead(keys=(self._leader_key,), args=(node, _millis(ttl)))
        return cast(int, held) == 1

    async def close(self) -> None:
        """Close the connection pool (only when this store opened it)."""
        if self._owns_client:
            with _translate_errors:
                await self._redis.aclose()

    async def _register_pool(self, pool: str) -> None:
        # Claimed before the await, so concurrent first acquires register once; given
        # back on failure, so the next acquire tries again.
        self._next_registration[pool] = time.monotonic() + REGISTER_SECONDS
        try:
            await self._register(keys=(self._pools_key,), args=(pool, self._tick_ttl_ms))
        except BaseException:
            self._next_registration.pop(pool, None)
            raise


def _parking(ends: str, reason: str, since: str) -> Parking:
    return Parking(s.FOREVER if ends == "forever" else float(ends), reason, float(since))


def _millis(seconds: float) -> int:
    """Seconds as whole milliseconds for PX/PEXPIRE, never 0 (which would delete the key)."""
    return max(1, math.ceil(seconds * 1000))
