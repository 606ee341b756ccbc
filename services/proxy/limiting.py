"""The proxy's side of the shared limiter: admission, outcome reports, degraded mode.

Per request, ``arrived`` counts it in the window's demand (in memory). Per upstream
attempt: ``admit`` makes one store round trip (and sleeps the wait it is given);
``record`` counts the outcome in memory. A wait follows the pool's rate: when an
answer shows that the rate changed, every request still waiting stretches or shrinks
what is left of its wait by old rate / new rate, as the store moves its backlog (see
acquire.lua), so a cut reaches the upstream at once instead of after the longest wait
already granted; a request whose wait would now end beyond RATE_LIMIT_MAX_WAIT gives up
and is answered 429 by the proxy. A background task flushes the counts
(one pipelined report per window) and heartbeats, so nothing but the admission itself is
on the response path.

If the store cannot be reached, the proxy goes on at its share of the last known rate
(the rate divided by the replicas that were alive), enforced by a private in-memory store,
reports itself degraded, and goes back to the shared store within a second of it
answering again. No request fails because the store is down. One failed call is only a
suspicion: that request is admitted locally and the background task pings at once; the
proxy degrades when the ping fails too. A pause of the proxy's own event loop (a full
garbage collection, a starved CPU) fails every call in flight at the time, and degrading
on it handed the whole replica to its local limiter, on top of the requests the shared
store had already scheduled, several times a minute on a busy machine (bench/limiter_sim).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass

from zai_proxy.limiter.memory_store import MemoryStore
from zai_proxy.limiter.store import Admission, LimiterStore, StoreError
from zai_proxy.proxy.errors import ProxyError
from zai_proxy.shared.outcomes import Outcome

log = logging.getLogger("zai_proxy.proxy")

FLUSH_SECONDS = 0.2
# A finished attempt's lease goes back within this (batched with the others that finish
# meanwhile): held longer, finished requests would count against the concurrency cap.
RELEASE_SECONDS = 0.02
HEARTBEAT_SECONDS = 2.0
HEARTBEAT_TTL_SECONDS = 6.0
REJOIN_SECONDS = 0.5
# A concurrency lease in the shared store lives this long unless its holder renews it,
# which the background task does with every heartbeat for each attempt still running: a
# lease outlives any exchange that is still going, and the leases of a proxy that died
# (kill -9, out of memory, a lost node) come back by themselves within this, instead of
# counting against the cluster-wide cap for as long as the longest exchange could last.
LEASE_TTL_SECONDS = 10.0
# Leases of the local store (degraded mode) live and die with this process: not renewed.
LOCAL_LEASE_TTL_SECONDS = 900.0
# While a learned cap on concurrency is reached, ask again after this, doubling (with
# jitter) up to the maximum. The cap counts the requests waiting for their turn too, so
# under overload it stays full for seconds, and hundreds of requests asking 20 times a
# second each cost the proxy and Redis more than the traffic they hold back (measured with
# bench/limiter_sim: 7x the Redis calls, pool exhaustion, the proxy dropping to degraded).
# The cap at its maximum (nothing learned) is not worth asking again: it bounds the queue.
CONCURRENCY_POLL_SECONDS = 0.05
CONCURRENCY_POLL_MAX_SECONDS = 1.0


class RateLimited(ProxyError):
    """The proxy's limiter would make this request wait longer than the queue budget."""

    status = 429
    code = "proxy_rate_limited"
    anthropic_type = "rate_limit_error"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), (b"x-ratelimit-source", b"proxy")]


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted attempt: its concurrency lease and how long it waited."""

    lease: str
    waited: float
    local: bool


class ProxyLimiter:
    """Admission and outcome reporting against the shared store, with a local fallback."""

    def __init__(
        self,
        store: LimiterStore,
        pool: str,
        *,
        max_wait: float,
        replica: str | None = None,
    ) -> None:
        self.store = store
        self.pool = pool
        self.max_wait = max_wait
        self.replica = replica or uuid.uuid4().hex[:12]
        # Lease ids only need to be unique in the pool: this replica's id and a counter.
        self._leases = itertools.count()
        self.degraded = False
        self.rate = store.config.initial_rate
        self.concurrency = store.config.initial_concurrency
        # The configured maximum cap (also the start): reached, it is a full queue.
        self.max_cap = store.config.initial_concurrency
        self.replicas = 1
        self._local = MemoryStore(store.config)
        self._offset = 0.0  # store clock minus local clock
        self._counts: defaultdict[int, Counter[str]] = defaultdict(Counter)
        self._released: list[str] = []
        # Leases the shared store granted to attempts still running: renewed until released.
        self._held: set[str] = set()
        self._wake = asyncio.Event()
        self._suspect = False  # a store call failed; the next ping decides
        # Set (and replaced) when an answer shows a new rate: wakes the waiting requests.
        self._rate_changed = asyncio.Event()
        self._rate_seen_at = -math.inf  # store time of the answer self.rate came from

    def arrived(self) -> None:
        """Count a request that wants the upstream in this window's demand.

        Counted on arrival, before the worker pool, not by the store at admission: with
        MAX_WORKERS below what the queue holds, admissions only come as fast as the rate
        lets workers go, so demand counted there never exceeds the rate and the controller
        could not tell a saturated window from an idle one (bench/limiter_sim with the
        default 64 workers: half the windows read as without demand, no climbing).
        """
        window = self.store.config.window_of(time.time() + self._offset)
        self._counts[window]["demand"] += 1

    async def admit(self) -> Ticket:
        """Wait for a slot; raise RateLimited when it would take longer than the budget."""
        lease = f"{self.replica}-{next(self._leases)}"
        start = time.monotonic()
        deadline = start + self.max_wait
        poll = CONCURRENCY_POLL_SECONDS
        while True:
            budget = max(0.0, deadline - time.monotonic())
            admission, local = await self._acquire(lease, budget)
            if admission.granted:
                if not local:
                    self._held.add(lease)
                if admission.wait > 0:
                    try:
                        if local:
                            await asyncio.sleep(admission.wait)
                        else:
                            await self._wait_turn(lease, admission.wait, admission.rate)
                    except BaseException:
                        # The turn is gone (RateLimited) or the client left (cancelled):
                        # the lease goes back now rather than when it expires.
                        await self.record(Ticket(lease, 0.0, local), None)
                        raise
                return Ticket(lease, time.monotonic() - start, local)
            if admission.reason == "concurrency" and admission.concurrency >= self.max_cap:
                raise RateLimited(
                    "the proxies' queue is full; the proxy is holding requests back",
                    retry_after=1.0,
                )
            if admission.reason != "concurrency" or budget < CONCURRENCY_POLL_SECONDS:
                raise RateLimited(
                    "the upstream's rate limit is reached; the proxy is holding requests back",
                    retry_after=max(admission.wait, 1.0),
                )
            await asyncio.sleep(min(budget, poll * random.uniform(0.5, 1.0)))
            poll = min(2 * poll, CONCURRENCY_POLL_MAX_SECONDS)

    async def _wait_turn(self, lease: str, wait: float, rate: float) -> None:
        """Sleep until the granted turn, rescaling what is left whenever the rate changes."""
        end = time.monotonic() + wait
        while True:
            now = time.monotonic()
            if rate != self.rate:
                left = max(0.0, end - now) * rate / self.rate
                rate = self.rate
                if left > self.max_wait:
                    # The store cut the backlog at max_wait from now: this turn is gone
                    # (admit releases the lease).
                    raise RateLimited(
                        "the upstream's rate limit dropped; the proxy is holding requests back",
                        retry_after=max(left - self.max_wait, 1.0),
                    )
                end = now + left
            if end <= now:
                return
            changed = self._rate_changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(end - now):
                    await changed.wait()

    async def _acquire(self, lease: str, budget: float) -> tuple[Admission, bool]:
        """An admission, and whether the local store gave it."""
        # Demand is counted on arrival (``arrived``), so no acquire counts it again.
        if not self.degraded:
            try:
                admission = await self.store.acquire(
                    self.pool, lease, budget, LEASE_TTL_SECONDS, demand=False
                )
            except StoreError:
                self._suspect = True
                self._wake.set()
            else:
                self._learn(admission)
                return admission, False
        local = await self._local.acquire(
            self.pool, lease, budget, LOCAL_LEASE_TTL_SECONDS, demand=False
        )
        return local, True

    def _learn(self, admission: Admission) -> None:
        # Answers can be handled out of order (several connections): the newest one wins.
        if admission.now < self._rate_seen_at:
            return
        self._rate_seen_at = admission.now
        self.concurrency = admission.concurrency
        self._offset = admission.now - time.time()
        if admission.rate != self.rate:
            self.rate = admission.rate
            self._rate_changed.set()
            self._rate_changed = asyncio.Event()

    async def record(self, ticket: Ticket, outcome: Outcome | None) -> None:
        """Count an attempt's outcome (None: it never reached the upstream) and release its
        lease; both are sent in the background, the release within RELEASE_SECONDS."""
        if ticket.local:
            await self._local.report(self.pool, 0, {}, release=(ticket.lease,))
            return
        if outcome is not None:
            window = self.store.config.window_of(time.time() + self._offset)
            self._counts[window][outcome.value] += 1
        self._held.discard(ticket.lease)
        self._released.append(ticket.lease)
        self._wake.set()

    async def _share_locally(self) -> float:
        """Set the local store to this replica's share of the last known limits."""
        share = self.rate / max(1, self.replicas)
        cap = max(1, self.concurrency // max(1, self.replicas))
        await self._local.save_state(self.pool, {"rate": repr(share), "concurrency": str(cap)})
        return share

    async def _degrade(self, exc: BaseException) -> None:
        if self.degraded:
            return
        self.degraded = True
        share = await self._share_locally()
        log.warning(
            "limiter store unreachable (%s): serving at this replica's share, %.3f req/s",
            type(exc).__name__,
            share,
        )
        self._wake.set()

    async def run(self) -> None:
        """Flush reports, heartbeat, and rejoin the store after an outage; until cancelled."""
        next_heartbeat = 0.0
        while True:
            # Cleared before the work: a release during the flush wakes the next round.
            self._wake.clear()
            try:
                if self.degraded or self._suspect:
                    await self.store.ping()
                    self._suspect = False
                if self.degraded:
                    # Counts and releases kept meanwhile go out with the next flush: a
                    # release is idempotent, and a lease left behind would count as in
                    # flight until its TTL.
                    self.degraded = False
                    next_heartbeat = 0.0
                    log.warning("limiter store reachable again: shared limit restored")
                if time.monotonic() >= next_heartbeat:
                    self.replicas = await self.store.heartbeat(
                        self.pool, self.replica, HEARTBEAT_TTL_SECONDS
                    )
                    next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
                    await self._share_locally()
                    if self._held:
                        await self.store.renew(self.pool, list(self._held), LEASE_TTL_SECONDS)
                await self.flush()
            except StoreError as exc:
                if self.degraded or self._suspect:
                    await self._degrade(exc)
                else:
                    self._suspect = True  # confirm with a ping first (see the docstring)
            if self._suspect and not self.degraded:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REJOIN_SECONDS if self.degraded else FLUSH_SECONDS):
                    await self._wake.wait()
                    # Woken by a release: let the others finishing now join this batch.
                    await asyncio.sleep(RELEASE_SECONDS)

    async def flush(self) -> None:
        """Send the counted outcomes and released leases."""
        if not self._counts and not self._released:
            return
        counts, released = self._counts, self._released
        self._counts, self._released = defaultdict(Counter), []
        # On a store failure this batch is lost: its windows are stepped without it, and
        # its leases expire by themselves.
        windows = sorted(counts) or [self.store.config.window_of(time.time() + self._offset)]
        for index, window in enumerate(windows):
            await self.store.report(
                self.pool, window, counts.get(window, {}), released if index == 0 else ()
            )
