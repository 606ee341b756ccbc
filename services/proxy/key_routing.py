"""Several upstream keys: each its own limiter pool; every attempt goes to the key with
the most headroom, and a key whose quota is spent is parked while traffic moves on.

Per attempt, the keys not parked (as far as this replica knows) are tried in order of
headroom: first those whose last refusal has passed, then the least loaded relative to
their share of the learned cap (this replica's attempts in flight on the key over cap /
replicas; a key with no cap learned counts as empty), ties broken by fewest in flight and
then in turn. Each is asked for a slot *now* (``ProxyLimiter.try_admit``: one store round
trip, no wait); the first that has one takes the attempt. Usually that is the first key
asked: one round trip, as with one key. When none has room, the attempt waits its turn
(``ProxyLimiter.admit``) on the key where it expects to wait least: at a concurrency cap,
the fewest of this replica's waiters per slot ((waiting + 1) / cap, so the queues grow in
proportion to the caps and drain together), at a rate, the refusal's wait plus the
waiters ahead at that rate (a round trip is taken as a second where the two meet). So at
saturation an attempt costs one round trip per key and one more.

Parking (``park``): after a quota-class answer the key's pool is parked in the store for
every replica (``LimiterStore.park``), and this replica skips it without asking the store
until it checks again (at most PARK_RECHECK_SECONDS later, so a lift by an operator is
seen within that). A replica that did not see the answer learns it from the store: its
next acquire on the pool is refused as parked, with the wait and the reason. With one key
there is nothing to move to, so nothing is parked (the upstream's quota answer passes to
the client as it always did), unless an operator parks it. When every key is parked, an
attempt is refused with ``KeysParked``: 429, Retry-After the earliest end, and every
key's reason, by alias.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from zai_proxy.limiter.store import Admission, Claim, StoreError
from zai_proxy.proxy.errors import ProxyError
from zai_proxy.proxy.headers import UpstreamAuth
from zai_proxy.proxy.limiting import Parked, ProxyLimiter, Ticket

log = logging.getLogger("zai_proxy.proxy")

# A replica checks a key it knows parked again after at most this: an operator's lift (or
# an earlier reset) reaches it within this much, for one store round trip per check.
PARK_RECHECK_SECONDS = 5.0
# Retry-After when every key is parked until an operator lifts it.
LIFT_RETRY_SECONDS = 300.0


class KeysParked(ProxyError):
    """Every upstream key is parked (spent quota, arrears, expired plan)."""

    status = 429
    code = "upstream_keys_parked"
    anthropic_type = "rate_limit_error"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), (b"x-ratelimit-source", b"proxy")]


@dataclass(slots=True)
class UpstreamKey:
    """One upstream key as the proxy routes to it: alias, credentials, pool, limiter."""

    alias: str
    auth: UpstreamAuth
    limiter: ProxyLimiter
    in_flight: int = 0  # this replica's attempts on the key now
    waiting: int = 0  # this replica's attempts waiting for the key's turn now
    busy_until: float = -math.inf  # monotonic: its last refusal's wait
    recheck_at: float = -math.inf  # monotonic: skip it without asking until then
    parked_until: float = -math.inf  # epoch seconds (inf: until lifted)
    parked_reason: str = ""
    order: int = field(default=0)

    @property
    def pool(self) -> str:
        return self.limiter.pool

    def parked(self, now: float) -> bool:
        """Whether this replica knows the key parked at epoch time ``now``."""
        return self.parked_until > now

    def load(self) -> float:
        """This replica's share of the key's learned cap in use (0 with no cap)."""
        cap = self.limiter.concurrency
        if cap is None:
            return 0.0
        return self.in_flight / max(1.0, cap / max(1, self.limiter.replicas))


def _expected_wait(key: UpstreamKey, refusal: Admission) -> float:
    """Seconds an attempt expects to wait for ``key``'s turn, behind this replica's waiters
    (a slot is taken to turn over once a second: only the ratio between keys matters)."""
    if refusal.reason == "concurrency" and refusal.concurrency:
        return (key.waiting + 1) / refusal.concurrency
    rate = refusal.rate if refusal.rate > 0 else 1.0
    return refusal.wait + key.waiting / rate


class KeyRouter:
    """Admits each attempt on the upstream key with the most headroom."""

    def __init__(self, keys: Sequence[UpstreamKey]) -> None:
        if not keys:
            raise ValueError("at least one upstream key is needed")
        self.keys = list(keys)
        self.by_alias = {key.alias: key for key in self.keys}
        # With one key there is nowhere to move a request: quota answers pass through.
        self.parks = len(self.keys) > 1
        self._turn = itertools.count()

    @property
    def degraded(self) -> bool:
        """Whether any key's limiter lost the shared store."""
        return any(key.limiter.degraded for key in self.keys)

    def others(self, skipped: Collection[str]) -> bool:
        """Whether any key is left outside ``skipped`` (parked or not)."""
        return any(key.alias not in skipped for key in self.keys)

    async def admit(
        self, skipped: Collection[str] = (), stay: str = "", claim: Claim | None = None
    ) -> tuple[UpstreamKey, Ticket]:
        """A key and its ticket for one attempt (see the module docstring); with ``stay``
        (the key whose 429 this attempt retries), a turn on that key unless it is parked.
        KeysParked when every key outside ``skipped`` is parked, RateLimited when the
        chosen key's wait is over budget, BudgetExceeded when the client (``claim``) is
        over one of its budgets."""
        while True:
            candidates = self._candidates(skipped)
            if not candidates:
                raise self._all_parked(skipped)
            staying = [key for key in candidates if key.alias == stay]
            if len(candidates) == 1 or staying:
                key = (staying or candidates)[0]
                key.waiting += 1
                try:
                    return key, self._took(key, await key.limiter.admit(claim))
                except Parked as parked:
                    self._parked_for(key, parked.seconds, parked.reason)
                    continue
                finally:
                    key.waiting -= 1
            best: UpstreamKey | None = None
            best_wait = math.inf
            for key in candidates:
                try:
                    answer = await key.limiter.try_admit(claim)
                except Parked as parked:
                    self._parked_for(key, parked.seconds, parked.reason)
                    continue
                if isinstance(answer, Ticket):
                    return key, self._took(key, answer)
                key.busy_until = time.monotonic() + answer.wait
                expected = _expected_wait(key, answer)
                if expected < best_wait:
                    best, best_wait = key, expected
            if best is None:
                continue  # every candidate turned out parked: look again
            best.waiting += 1
            try:
                return best, self._took(best, await best.limiter.admit(claim))
            except Parked as parked:
                self._parked_for(best, parked.seconds, parked.reason)
            finally:
                best.waiting -= 1

    def add_tokens(self, client: str, tokens: int) -> None:
        """Count a client's tokens against its tokens budget (which holds in every pool:
        the first key's limiter carries the count to the store)."""
        self.keys[0].limiter.add_tokens(client, tokens)

    def release(self, key: UpstreamKey) -> None:
        """An attempt on ``key`` is over."""
        key.in_flight -= 1

    async def park(self, key: UpstreamKey, seconds: float, reason: str) -> None:
        """Park a key for every replica (kept here alone if the store cannot be reached)."""
        until = time.time() + seconds
        try:
            held = await key.limiter.store.park(key.pool, seconds, reason)
        except StoreError as exc:
            log.warning("key=%s parking not shared (store unreachable: %s)", key.alias, exc)
        else:
            # The parking in force may be an earlier, longer one (its end and reason win);
            # the store's clock is Redis's, within clock skew of this one.
            until, reason = held.until, held.reason
        self._mark_parked(key, until, reason)
        log.warning(
            "key=%s parked %s: %s",
            key.alias,
            "until lifted" if math.isinf(until) else f"for {until - time.time():.0f} s",
            reason,
        )

    async def run(self) -> None:
        """Every key's limiter background work, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            for key in self.keys:
                tasks.create_task(key.limiter.run(), name=f"limiter-{key.alias}")

    async def flush(self) -> None:
        """Send every key's counted ticks and released leases."""
        for key in self.keys:
            await key.limiter.flush()

    def _candidates(self, skipped: Collection[str]) -> list[UpstreamKey]:
        monotonic, now = time.monotonic(), time.time()
        keys = [
            key
            for key in self.keys
            if key.alias not in skipped and (key.recheck_at <= monotonic or not key.parked(now))
        ]
        if len(keys) < 2:
            return keys  # one key (the usual set-up): nothing to order, per attempt
        turn = next(self._turn)
        return sorted(
            keys,
            key=lambda k: (
                k.busy_until > monotonic,
                k.load(),
                k.in_flight,
                (k.order - turn) % len(self.keys),
            ),
        )

    def _took(self, key: UpstreamKey, ticket: Ticket) -> Ticket:
        key.in_flight += 1
        if key.parked_until > -math.inf:
            key.parked_until, key.parked_reason = -math.inf, ""  # it came back
        return ticket

    def _parked_for(self, key: UpstreamKey, seconds: float, reason: str) -> None:
        """The store refused the key as parked, for ``seconds`` more."""
        self._mark_parked(key, time.time() + seconds, reason)

    def _mark_parked(self, key: UpstreamKey, until: float, reason: str) -> None:
        """Skip the key until epoch time ``until`` (infinity: until lifted), asking the
        store again after at most PARK_RECHECK_SECONDS."""
        now = time.time()
        key.parked_until = until
        key.parked_reason = reason
        key.recheck_at = time.monotonic() + max(0.0, min(until - now, PARK_RECHECK_SECONDS))

    def _all_parked(self, skipped: Collection[str]) -> KeysParked:
        now = time.time()
        parked = [key for key in self.keys if key.alias not in skipped and key.parked(now)]
        reasons = "; ".join(
            f"{key.alias}: {key.parked_reason}"
            + ("" if math.isinf(key.parked_until) else f" (back in {key.parked_until - now:.0f} s)")
            for key in parked
        )
        ends = [key.parked_until - now for key in parked if not math.isinf(key.parked_until)]
        return KeysParked(
            f"every upstream key is parked: {reasons}",
            retry_after=min(ends) if ends else LIFT_RETRY_SECONDS,
        )
