"""The proxy's side of the shared limiter: admission, tick counts, degraded mode.

Per upstream attempt: ``admit`` makes one store round trip (and sleeps the wait it is
given); ``record`` counts the outcome in memory. Counts go into ticks of the store's
clock (``RATE_LIMIT_TICK``): ``sent`` and ``throttled`` (waited for the rate, or held
back) in the tick the attempt left or was refused in, ``capped`` when it waited for a
concurrency slot, outcomes in the tick their answer came back in, with the in-flight
count an attempt sent the moment it was granted went out at (``ok_at``, ``refused_at``:
exact evidence of a concurrency limit; a wait for a slot comes before the grant, so it
keeps the count exact, a wait for the rate after it does not). A background task
flushes the counts and released leases every FLUSH_SECONDS in one store call; a 429 is
flushed at once, before its retry is admitted, so that the store's push (a probe ended, a
cap lowered) is in force for it.

A wait follows the pool's rate: when an answer shows that the rate changed, every request
still waiting stretches or shrinks what is left of its wait by old rate / new rate, as the
store moves its backlog (see acquire.lua), so a cut reaches the upstream at once instead
of after the longest wait already granted; a request whose wait would now end beyond
RATE_LIMIT_MAX_WAIT gives up and is answered 429 by the proxy.

A request held by the concurrency cap waits in this replica's queue (oldest first) for a
slot to come free anywhere in the fleet: the store announces every release, cap raise and
reset while a cap is in force (``LimiterStore.freed``), and each announcement of n slots
wakes this replica's n oldest waiters, which ask the store again (a waiter that loses the
slot to another replica keeps its place). Announcements are at most once, so a waiter
also asks again now and then, less and less often.

With client keys (ADR 0020) each attempt carries its client's claim: the store applies
the client's budgets (a refusal is BudgetExceeded, 429 at once) and its fair share of the
cap (a refusal with reason "share" waits for a slot like one at the cap, and hands the
announcement it used on to a waiter of another flow) or of the rate's backlog (reason
"queue": it asks again when its turn can be within the fair horizon, counted throttled).
This replica's waiters are woken lower priority rank first, oldest first within a rank.
A request that stops waiting (over budget, or its client left) releases its lease, so the
store stops counting it as waiting at the next flush.

If the store cannot be reached, the proxy goes on at its share of the last known limits
(divided by the replicas that were alive), enforced by a private in-memory store, reports
itself degraded, and goes back to the shared store within a second of it answering again.
No request fails because the store is down. One failed call is only a suspicion: that
request is admitted locally and the background task pings at once; the proxy degrades
when the ping fails too (a pause of the proxy's own event loop fails every call in flight
at the time, and degrading on it handed the whole replica to its local limiter).
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
from collections import defaultdict, deque
from dataclasses import dataclass, replace

from zai_proxy.limiter.memory_store import MemoryStore
from zai_proxy.limiter.store import (
    Admission,
    Claim,
    LimiterStore,
    StoreError,
    lease_id,
    state_version,
)
from zai_proxy.proxy.clients import budget_exceeded
from zai_proxy.proxy.errors import ProxyError
from zai_proxy.shared.outcomes import Outcome

log = logging.getLogger("zai_proxy.proxy")

FLUSH_SECONDS = 0.1
# A finished attempt's lease goes back within this (batched with the others that finish
# meanwhile): held longer, finished requests would count against the concurrency cap.
RELEASE_SECONDS = 0.005
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
# While the learned cap on concurrency is reached, ask again when a slot is announced
# free, or after this, doubling (with jitter) up to the maximum: a lost announcement or an
# expired lease is found by asking, and hundreds of requests asking 20 times a second each
# cost the proxy and Redis more than the traffic they hold back.
CONCURRENCY_POLL_SECONDS = 0.05
CONCURRENCY_POLL_MAX_SECONDS = 0.5

_LIMITED = frozenset({Outcome.RATE_FREQUENCY, Outcome.RATE_CONCURRENCY})


class RateLimited(ProxyError):
    """The proxy's limiter would make this request wait longer than the queue budget."""

    status = 429
    code = "proxy_rate_limited"
    anthropic_type = "rate_limit_error"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), (b"x-ratelimit-source", b"proxy")]


def _refuse_now(admission: Admission, claim: Claim | None) -> None:
    """Raise for the refusals no wait can help: a parked pool, a client over budget."""
    if admission.reason == "parked":
        raise Parked(admission.wait, admission.parked)
    if admission.reason == "budget":
        client = "" if claim is None else claim.client
        raise budget_exceeded(client, admission.budget, admission.wait)


class Parked(Exception):
    """The store refused the pool as parked: its upstream key refuses work for now."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds = seconds  # until the parking ends; infinity: until it is lifted
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted attempt: its lease, how long it waited, and what it went out under."""

    lease: str
    waited: float
    local: bool
    in_flight: int = 0  # leases in the pool when it was granted, its own included
    epoch: int = 0  # the cap's epoch it went out under
    sent_at: float = 0.0  # monotonic
    # Sent the moment it was granted (no wait for the rate after its lease): in_flight is
    # then the count it went out at. A wait for a slot comes before the grant and keeps it.
    exact: bool = False


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
        self.concurrency: int | None = None
        self.epoch = 0
        self.replicas = 1
        self._local = MemoryStore(store.config)
        self._offset = 0.0  # store clock minus local clock
        self._counts: defaultdict[int, dict[str, float]] = defaultdict(dict)
        self._released: list[str] = []
        # Leases the shared store granted to attempts still running: renewed until released.
        self._held: set[str] = set()
        self._wake = asyncio.Event()
        self._suspect = False  # a store call failed; the next ping decides
        # Set (and replaced) when an answer shows a new rate: wakes the waiting requests.
        self._rate_changed = asyncio.Event()
        # Requests waiting for a concurrency slot, oldest first, with their flow and rank
        # (see the module docstring).
        self._slot_waiters: deque[tuple[str, int, asyncio.Future[None]]] = deque()
        # Tokens of clients with a tokens budget, for the next flush.
        self._tokens: defaultdict[str, int] = defaultdict(int)
        self._rate_seen_at = -math.inf  # store time of the answer self.rate came from
        # Leases of requests the store counts as waiting for a slot (a claim's, queued).
        self._waiting: set[str] = set()

    def _tick(self) -> dict[str, float]:
        return self._counts[self.store.config.tick_of(time.time() + self._offset)]

    def _count(self, name: str, value: float = 1, *, local: bool = False) -> None:
        """Add to this tick's count. What the local store decided (degraded mode) is left
        out, as its outcomes are: the shared law hears only of the shared admissions."""
        if local:
            return
        counts = self._tick()
        counts[name] = counts.get(name, 0) + value

    async def try_admit(self, claim: Claim | None = None) -> Ticket | Admission:
        """One store round trip without waiting: a ticket when the pool has room now,
        else the refusal (counted as throttled or capped: demand the pool could not take).
        Raises Parked when the pool is parked, BudgetExceeded when the client is over a
        budget."""
        if claim is not None and claim.queue:
            claim = replace(claim, queue=False)  # asked once: not waiting for a slot here
        lease = lease_id(claim, f"{self.replica}-{next(self._leases)}")
        admission, local = await self._acquire(lease, 0.0, claim)
        if admission.granted:  # with no wait allowed, a grant is a slot now
            if not local:
                self._held.add(lease)
            self._count("sent", local=local)
            now = time.monotonic()
            return Ticket(lease, 0.0, local, admission.in_flight, admission.epoch, now, exact=True)
        _refuse_now(admission, claim)
        self._count("throttled" if admission.reason == "rate" else "capped", local=local)
        return admission

    async def admit(self, claim: Claim | None = None) -> Ticket:
        """Wait for a slot; raise RateLimited when it would take longer than the budget,
        Parked when the pool is parked, BudgetExceeded when the client is over a budget."""
        lease = lease_id(claim, f"{self.replica}-{next(self._leases)}")
        try:
            return await self._admit(lease, claim)
        except BaseException:
            if lease in self._waiting:
                # It stopped waiting: the store stops counting it at the next flush.
                self._waiting.discard(lease)
                self._released.append(lease)
                self._wake.set()
            raise

    async def _admit(self, lease: str, claim: Claim | None) -> Ticket:
        start = time.monotonic()
        deadline = start + self.max_wait
        poll = CONCURRENCY_POLL_SECONDS
        capped = False
        flow, rank = ("", 0) if claim is None else (claim.flow, claim.rank)
        while True:
            budget = max(0.0, deadline - time.monotonic())
            admission, local = await self._acquire(lease, budget, claim)
            if admission.granted:
                self._waiting.discard(lease)
                if not local:
                    self._held.add(lease)
                if admission.wait > 0:
                    self._count("throttled", local=local)
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
                self._count("sent", local=local)
                now = time.monotonic()
                waited = now - start if admission.wait > 0 or capped else 0.0
                return Ticket(
                    lease,
                    waited,
                    local,
                    admission.in_flight,
                    admission.epoch,
                    now,
                    exact=admission.wait == 0,
                )
            _refuse_now(admission, claim)
            # Held back by the rate: its own refusal, or its turn in the rate's backlog.
            by_rate = admission.reason in ("rate", "queue")
            if admission.reason == "rate" or budget <= 0:
                self._count("throttled" if by_rate else "capped", local=local)
                if admission.reason in ("share", "queue"):
                    message = "other clients wait for their share of the upstream's limit"
                else:
                    limit = "rate" if by_rate else "concurrency"
                    message = f"the upstream's {limit} limit is reached"
                raise RateLimited(
                    f"{message}; the proxy is holding requests back",
                    retry_after=max(admission.wait, 1.0),
                )
            if claim is not None and claim.queue and not local:
                self._waiting.add(lease)  # the store counts it as waiting
            if admission.reason == "share":
                # The slot is another flow's: hand the announcement on to its waiter here.
                self._free_slots(1, skip=flow)
            again = capped
            if not capped:
                capped = True
                self._count("throttled" if by_rate else "capped", local=local)
            seconds = poll * random.uniform(0.5, 1.0)
            if admission.reason == "queue":
                seconds = max(seconds, admission.wait)  # until its turn can be within reach
            if not await self._wait_for_slot(min(budget, seconds), flow, rank, first=again):
                poll = min(2 * poll, CONCURRENCY_POLL_MAX_SECONDS)

    async def _wait_for_slot(self, seconds: float, flow: str, rank: int, *, first: bool) -> bool:
        """Wait in the queue for a slot to be announced free, at most ``seconds``: at its
        back, or (``first``: woken before, but the slot went elsewhere) at its front.
        True when woken by an announcement."""
        waiter = asyncio.get_running_loop().create_future()
        entry = (flow, rank, waiter)
        if first:
            self._slot_waiters.appendleft(entry)
        else:
            self._slot_waiters.append(entry)
        try:
            async with asyncio.timeout(seconds):
                await waiter
        except TimeoutError:
            return False
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._slot_waiters.remove(entry)
        return True

    def _free_slots(self, slots: int, skip: str | None = None) -> None:
        """Wake ``slots`` requests waiting for a slot: the lowest rank first, oldest first
        within it, none of flow ``skip``."""
        waiters = self._slot_waiters
        while slots > 0 and waiters:
            best = None
            for entry in waiters:
                if entry[0] != skip and not entry[2].done():
                    if best is None or entry[1] < best[1]:
                        best = entry
                    if entry[1] == 0:
                        break
            if best is None:
                return
            waiters.remove(best)
            best[2].set_result(None)
            slots -= 1

    async def _wait_turn(self, lease: str, wait: float, rate: float) -> None:
        """Sleep until the granted turn, rescaling what is left whenever the rate changes."""
        end = time.monotonic() + wait
        while True:
            now = time.monotonic()
            if rate != self.rate:
                left = max(0.0, end - now)
                left = 0.0 if math.isinf(self.rate) else left * rate / self.rate
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

    async def _acquire(
        self, lease: str, budget: float, claim: Claim | None
    ) -> tuple[Admission, bool]:
        """An admission, and whether the local store gave it."""
        if not self.degraded:
            try:
                admission = await self.store.acquire(
                    self.pool, lease, budget, LEASE_TTL_SECONDS, claim
                )
            except StoreError:
                self._suspect = True
                self._wake.set()
            else:
                self._learn(admission)
                return admission, False
        local = await self._local.acquire(self.pool, lease, budget, LOCAL_LEASE_TTL_SECONDS, claim)
        return local, True

    def _learn(self, admission: Admission) -> None:
        # Answers can be handled out of order (several connections): the newest one wins.
        if admission.now < self._rate_seen_at:
            return
        self._rate_seen_at = admission.now
        self.concurrency = admission.concurrency
        self.epoch = admission.epoch
        self._offset = admission.now - time.time()
        if admission.rate != self.rate:
            self.rate = admission.rate
            self._rate_changed.set()
            self._rate_changed = asyncio.Event()

    async def record(
        self, ticket: Ticket, outcome: Outcome | None, *, told: float | None = None
    ) -> None:
        """Count an attempt's outcome (None: it never reached the upstream) and the rate its
        answer's headers told, and release its lease: in the background within
        RELEASE_SECONDS, or at once after a 429 (so its retry meets what the 429 taught the
        store)."""
        if ticket.local:
            await self._local.report(self.pool, {}, release=(ticket.lease,))
            self._free_slots(1)
            return
        if told is not None:
            counts = self._tick()
            counts["told"] = min(counts.get("told", told), told)
        if outcome is not None:
            self._count(outcome.value)
            exact = ticket.exact and ticket.in_flight > 0
            if outcome is Outcome.OK:
                self._count("latency_sum", time.monotonic() - ticket.sent_at)
                self._count("latency_count")
                if exact and ticket.epoch == self.epoch:
                    counts = self._tick()
                    counts["ok_at"] = max(counts.get("ok_at", 0), ticket.in_flight)
            elif outcome is Outcome.RATE_CONCURRENCY and ticket.in_flight > 0:
                # The count at grant: exact when the attempt did not wait, an upper bound
                # of the count it went out at when it did (those ahead may have finished).
                counts = self._tick()
                held = counts.get("refused_at")
                counts["refused_at"] = (
                    ticket.in_flight if held is None else min(held, ticket.in_flight)
                )
        self._held.discard(ticket.lease)
        self._released.append(ticket.lease)
        if outcome in _LIMITED and not self.degraded:
            try:
                await self.flush()
            except StoreError:
                self._suspect = True  # the background task pings and decides
                self._wake.set()
        else:
            self._wake.set()

    async def _share_locally(self) -> float:
        """Set the local store to this replica's share of the last known limits."""
        replicas = max(1, self.replicas)
        share = self.rate / replicas
        cap = None if self.concurrency is None else max(1, self.concurrency // replicas)
        fields = {
            "rate": "inf" if math.isinf(share) else repr(share),
            "concurrency": "" if cap is None else str(cap),
        }
        held = state_version(await self._local.load_state(self.pool))
        await self._local.save_state(self.pool, fields, held)
        return share

    async def _degrade(self, exc: BaseException) -> None:
        if self.degraded:
            return
        self.degraded = True
        share = await self._share_locally()
        log.warning(
            "limiter store unreachable (%s): serving at this replica's share, %s req/s",
            type(exc).__name__,
            "no limit" if math.isinf(share) else f"{share:.3f}",
        )
        self._wake.set()

    async def run(self) -> None:
        """Flush reports, heartbeat, rejoin the store after an outage, and wake waiters
        when slots are announced free; until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._watch_freed())
            tasks.create_task(self._report_forever())

    async def _watch_freed(self) -> None:
        """Wake waiters as the store announces slots freed; listen again after a failure."""
        while True:
            try:
                async for slots in self.store.freed(self.pool):
                    self._free_slots(slots)
            except StoreError:
                pass  # the reporting task finds out whether the store is down
            await asyncio.sleep(REJOIN_SECONDS)

    async def _report_forever(self) -> None:
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

    def add_tokens(self, client: str, tokens: int) -> None:
        """Count a client's tokens against its tokens budget (sent with the next flush)."""
        if tokens > 0:
            self._tokens[client] += tokens
            self._wake.set()

    async def flush(self) -> None:
        """Send the counted ticks, released leases and tokens in one store call."""
        if not self._counts and not self._released and not self._tokens:
            return
        counts, released, tokens = self._counts, self._released, self._tokens
        self._counts, self._released, self._tokens = defaultdict(dict), [], defaultdict(int)
        # On a store failure this batch's ticks and leases are lost: its ticks are stepped
        # without it, and its leases expire by themselves. Its tokens are kept for the
        # next flush (a budget is money; while degraded, the local store counts none).
        try:
            await self.store.report(self.pool, counts, released, tokens)
        except StoreError:
            for client, spent in tokens.items():
                self._tokens[client] += spent
            raise
