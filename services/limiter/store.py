"""The limiter store: the one interface between proxies, the limiter and the shared state.

Two implementations sit behind it and are chosen in exactly one place (``open_store``):
``RedisStore`` (Lua scripts on Redis's own clock, shared by every replica) and
``MemoryStore`` (one process: ``REDIS_URL`` unset). One contract test suite runs against
both, and against fakeredis.

Hot path (proxies), one round trip each:
- ``acquire``: a concurrency lease (unless the cap is reached) and a slot at the pool's
  rate (GCRA with a small burst); answer how long to wait. A wait longer than
  ``max_wait`` reserves nothing. No rate (infinity) and no cap: nothing is throttled.
- ``report``: add the proxies' tick counts, release leases, and push: a 429 of a probing
  limit ends the probe at once for every replica (``probe_base`` / ``cap_base`` become the
  limits in force), and the first 1302 caps an uncapped pool (see ``pushed_cap``).
- ``heartbeat``: say this replica is alive; learn how many share the pool.
- ``renew``: keep the concurrency leases of the attempts still running from expiring.
- ``park`` (after a quota-class answer: one call, off the hot path) and, in ``acquire``,
  the parking read: a parked pool refuses with reason "parked", the wait until it comes
  back (infinity: until ``lift``) and why, in the same single round trip.
- ``freed``: hear, from every replica, how many concurrency slots came free while a cap is
  in force (leases released, a cap raised or lifted), to wake requests waiting for one.

Clients (ADR 0020). An acquire may carry a ``Claim``: the client's alias, weight and
priority rank, and its budgets. The lease id then names the claim's flow
(``lease_id``), so every lease and every waiting request says whose it is, and nothing
else needs counting (no counter to drift when a lease expires):
- **Fair share of a cap.** While a concurrency cap is in force and requests wait for it
  (``waiters``: the leases of requests refused that will ask again, each until
  WAITING_SECONDS unless it asks again), a free slot goes to a flow below its weighted
  max-min share (``fair_shares``: priority ranks first, each flow's demand its leases
  held plus its waiters), unless no other flow below its share is waiting: a flow over
  its share is refused with reason "share" only for the sake of one that waits.
- **Fair share of a rate.** A claim books no further than FAIR_HORIZON_SECONDS ahead in
  the rate's backlog (refused "queue" beyond it, with the wait until it is within), and
  within it the same rule holds with the flow's reservations still ahead (``queued``)
  in place of its leases and the horizon's slots (horizon x rate) in place of the cap
  (refused "queue" too).
- **Budgets**, per client and fleet-wide: requests per minute (GCRA, charged when a
  request is first granted), concurrent requests (the client's leases in every pool) and
  tokens per UTC day (added by ``report``); a client over one is refused with reason
  "budget", which one, and the wait until it allows another.

Control plane (the limiter's leader): ``pools``, ``read_ticks``, ``load_state``,
``save_state`` (compare-and-set on ``version``, so a step never overwrites a push made
meanwhile), ``load_bounds``, ``save_bounds``, ``replicas``, ``reset``, ``lead``; and
for the admin API and status, ``parking`` and ``lift``.

Error hierarchy:

    StoreError            any failure of the store
    └── StoreUnavailable  the store cannot be reached now (proxies degrade to local limits)
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

# Defaults of StoreConfig, the values the settings start from.
DEFAULT_PREFIX = "zaiproxy"
DEFAULT_BURST_SECONDS = 0.25
DEFAULT_TICK_SECONDS = 0.25
DEFAULT_TICK_TTL_SECONDS = 60.0

# Saved controller state outlives restarts of every part, but a pool nobody steps for a
# week is gone (renewed by every save, so a live pool never expires).
STATE_TTL_SECONDS = 7 * 24 * 3600.0
# The wait suggested with a concurrency refusal: slots free when leases are released, at
# any moment, so the caller polls briefly instead of waiting an emission interval.
CONCURRENCY_RETRY_SECONDS = 0.05
# What ``freed`` yields when a cap is lifted or the pool reset: every waiter may go.
ALL_SLOTS = 1_000_000
# A pool is registered in the pool list at most this often by each store.
REGISTER_SECONDS = 5.0
# A request refused for a slot counts as waiting (for the fair share) this long unless it
# asks again: a waiter asks at least every CONCURRENCY_POLL_MAX_SECONDS (0.5 s), and one
# that gives up releases its lease at once; this bounds a waiter whose proxy died.
WAITING_SECONDS = 1.0
# A claim books no further ahead than this in a rate's backlog (beyond, it waits and asks
# again), and within it only its fair share of the horizon's slots while others wait.
FAIR_HORIZON_SECONDS = 0.5
# The client budgets' periods: requests per minute, tokens per UTC day.
MINUTE_SECONDS = 60.0
DAY_SECONDS = 86_400.0
# Tokens counted for a day are kept one day past it.
TOKENS_TTL_SECONDS = 2 * DAY_SECONDS
# Priority classes, first served first (a Claim's rank is the index).
PRIORITIES = ("interactive", "batch")

# Tick counts that are extremes, not sums: the highest in-flight count an attempt sent
# under the cap in force was answered ok at, and the lowest one a 1302 came at.
MAX_FIELDS = frozenset({"ok_at"})
MIN_FIELDS = frozenset({"refused_at", "told"})  # told: the rate an answer's headers stated
FLOAT_FIELDS = frozenset({"latency_sum"})

# The state fields ``acquire`` and ``report`` read and write (the rest is the law's).
RATE = "rate"  # requests per second in force; "inf": no limit
CONCURRENCY = "concurrency"  # the cap in force; "": none
EPOCH = "epoch"  # changes with every cap, so ok answers under an older cap are told apart
PROBE_BASE = "probe_base"  # during a rate probe: the rate a 429 puts back
CAP_BASE = "cap_base"  # during a cap probe: the cap a 1302 puts back
CAP_FLOOR = "cap_floor"  # CONCURRENCY_LIMIT_MIN, for the push
PUSHED_RATE = "pushed_rate"  # store time of the last rate push
PUSHED_CAP = "pushed_cap"  # store time of the last cap push
VERSION = "version"  # bumped by every save and push


# A parking that lasts until it is lifted (an arrears or an expired plan).
FOREVER = math.inf


class StoreError(Exception):
    """The limiter store failed."""


class StoreUnavailable(StoreError):
    """The limiter store cannot be reached now."""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """How a store lays out and times its state."""

    prefix: str = DEFAULT_PREFIX
    initial_rate: float = 20.0  # used while a pool has no saved state
    burst_seconds: float = DEFAULT_BURST_SECONDS  # GCRA tolerance
    tick_seconds: float = DEFAULT_TICK_SECONDS
    tick_ttl_seconds: float = DEFAULT_TICK_TTL_SECONDS  # how long tick counters live

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{}: "):
            raise ValueError("prefix must be a non-empty word without braces, colons or spaces")
        if not self.initial_rate > 0:
            raise ValueError("initial_rate must be > 0")
        if self.burst_seconds < 0 or self.tick_seconds <= 0:
            raise ValueError("burst_seconds must be >= 0 and tick_seconds > 0")
        if self.tick_ttl_seconds < 8 * self.tick_seconds:
            raise ValueError("tick_ttl_seconds must cover at least eight ticks")

    def tick_of(self, now: float) -> int:
        """The index of the tick holding a store-clock time."""
        return int(now // self.tick_seconds)


@dataclass(frozen=True, slots=True)
class Budgets:
    """A client's optional caps, fleet-wide (None: no cap)."""

    rpm: int | None = None  # requests per minute
    concurrent: int | None = None  # requests in flight, in every pool together
    tokens_per_day: int | None = None  # input and output tokens per UTC day

    def __post_init__(self) -> None:
        for name in ("rpm", "concurrent", "tokens_per_day"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"a client's {name} budget must be at least 1")

    def __bool__(self) -> bool:
        return not (self.rpm is None and self.concurrent is None and self.tokens_per_day is None)


NO_BUDGETS = Budgets()


@dataclass(frozen=True, slots=True)
class Claim:
    """Who asks for a slot: a client's flow in the pool's fair share, and its budgets."""

    client: str  # the alias (letters, digits, '.', '_', '-')
    weight: float = 1.0
    rank: int = 0  # index in PRIORITIES: lower ranks are served first
    budgets: Budgets = NO_BUDGETS
    # Refused, the request waits and asks again: it counts as waiting for the fair share.
    queue: bool = True
    # A grant counts against the requests-per-minute budget (the request's first grant).
    charge: bool = True

    def __post_init__(self) -> None:
        if not (0 < self.weight < math.inf):
            raise ValueError("a client's weight must be > 0")
        if not 0 <= self.rank < len(PRIORITIES):
            raise ValueError(f"a rank is 0-{len(PRIORITIES) - 1}")
        if not self.client or any(c in self.client for c in "/:{} "):
            raise ValueError("a client alias has no '/', ':', braces or spaces")

    @property
    def flow(self) -> str:
        """The flow's name, as lease ids carry it: ``rank:weight:client``."""
        return f"{self.rank}:{self.weight:g}:{self.client}"


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow of a pool now: the leases it holds and its requests waiting."""

    client: str
    rank: int
    weight: float
    held: int
    waiting: int


def lease_id(claim: Claim | None, name: str) -> str:
    """A lease id that names the claim's flow (``flow/name``); ``name`` alone without one."""
    return name if claim is None else f"{claim.flow}/{name}"


def parse_flow(flow: str) -> tuple[int, float, str]:
    """(rank, weight, client) of a flow's name; an unreadable one is rank 0, weight 1."""
    rank, _, rest = flow.partition(":")
    weight, _, client = rest.partition(":")
    try:
        return int(rank), float(weight), client
    except ValueError:
        return 0, 1.0, client


def flow_of(lease: str) -> str:
    """The flow a lease id names ("" for a lease taken without a claim)."""
    flow, sep, _ = lease.partition("/")
    return flow if sep else ""


def fair_shares(flows: Mapping[str, tuple[int, float, float]], capacity: float) -> dict[str, float]:
    """Weighted max-min shares of ``capacity`` between flows {name: (rank, weight,
    demand)}: rank by rank (lower first), each rank's flows filled to the same level per
    unit of weight, a flow never above its demand; what a rank leaves goes to the next.
    acquire.lua computes the same."""
    shares: dict[str, float] = {}
    for rank in sorted({rank for rank, _, _ in flows.values()}):
        open_ = [name for name, (r, _, _) in flows.items() if r == rank]
        while open_:
            level = max(0.0, capacity) / sum(flows[name][1] for name in open_)
            settled = [name for name in open_ if flows[name][2] <= level * flows[name][1]]
            if not settled:
                for name in open_:
                    shares[name] = level * flows[name][1]
                capacity = 0.0
                break
            for name in settled:
                shares[name] = flows[name][2]
                capacity -= flows[name][2]
            open_ = [name for name in open_ if name not in settled]
    return shares


def over_share(flow: str, held: Mapping[str, int], waiting: Mapping[str, int], cap: int) -> bool:
    """Whether a flow asking for a slot must leave it to another: it holds its fair share
    of ``cap`` or more while another flow below its share waits. ``held`` and ``waiting``
    count every flow's leases and waiting requests, the asking one's request among them."""
    names = set(held) | set(waiting)
    flows: dict[str, tuple[int, float, float]] = {}
    for name in names:
        rank, weight, _ = parse_flow(name)
        flows[name] = (rank, weight, held.get(name, 0) + waiting.get(name, 0))
    shares = fair_shares(flows, cap)
    if held.get(flow, 0) < shares.get(flow, 0.0):
        return False
    return any(
        name != flow and waiting.get(name, 0) > 0 and held.get(name, 0) < shares[name]
        for name in names
    )


def count_flows(leases: Sequence[str], waiters: Sequence[str]) -> list[Flow]:
    """Flows counted from lease ids (``store.lease_id``); leases without a claim left out."""
    held: dict[str, int] = {}
    waiting: dict[str, int] = {}
    for counts, members in ((held, leases), (waiting, waiters)):
        for member in members:
            flow = flow_of(member)
            if flow:
                counts[flow] = counts.get(flow, 0) + 1
    return [
        Flow(client, rank, weight, held.get(name, 0), waiting.get(name, 0))
        for name in sorted(held.keys() | waiting.keys())
        for rank, weight, client in (parse_flow(name),)
    ]


def utc_day(now: float) -> int:
    """The UTC day of a store-clock time (days since the epoch): the tokens budget's period."""
    return int(now // DAY_SECONDS)


@dataclass(frozen=True, slots=True)
class Admission:
    """The store's answer to one request for a slot."""

    granted: bool
    # granted: seconds to wait before sending; refused: the wait it would need (parked:
    # until the pool comes back, FOREVER until it is lifted; a budget: until it allows one)
    wait: float
    # share: another flow's turn at the cap; queue: at the rate (its backlog's fair share)
    reason: Literal["ok", "rate", "concurrency", "parked", "share", "queue", "budget"]
    rate: float  # the pool's rate now (infinity: none)
    concurrency: int | None  # the pool's cap now (None: none)
    in_flight: int  # leases held in the pool, this one's included when granted
    epoch: int  # the cap's epoch
    now: float  # the store's clock (epoch seconds), so callers can align ticks
    parked: str = ""  # refused as parked: why (as ``park`` was told)
    budget: str = ""  # refused by a budget: which ("rpm", "concurrent", "tokens_per_day")


@dataclass(frozen=True, slots=True)
class Parking:
    """Why and until when a pool is parked (its upstream key refuses work)."""

    until: float  # store-clock epoch seconds; FOREVER: until lifted
    reason: str
    since: float  # when it was parked


def check_parking(seconds: float, reason: str) -> None:
    """Refuse a parking that could not be stored faithfully."""
    if not (seconds > 0 and not math.isnan(seconds)):
        raise ValueError("a pool is parked for more than 0 seconds (FOREVER: until lifted)")
    if not reason or len(reason) > 200:
        raise ValueError("a parking reason is 1-200 characters")


def pushed_cap(cap: int | None, base: int | None, refused_at: int | None, floor: int) -> int | None:
    """The cap ``report`` puts in force after a 1302, or None to leave it: a probe's base,
    else, with no cap yet, one below the in-flight count the 1302 came at (the first 1302
    must cap the fleet at once; lowering a cap is the law's, which weighs the evidence)."""
    if base is not None:
        return base
    if cap is not None or refused_at is None:
        return None
    return max(floor, refused_at - 1)


def parse_rate(text: str | None, default: float) -> float:
    """A saved rate: "inf" is no limit; missing, zero or unreadable: ``default``."""
    if text is None:
        return default
    if text == "inf":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        return default
    # Only "inf" means no limit, as in acquire.lua: any other spelling of infinity
    # ("Infinity", "1e400") is as unreadable there as here.
    return value if value > 0 and math.isfinite(value) else default


def parse_cap(text: str | None) -> int | None:
    """A saved cap: empty or unreadable is none; otherwise at least one."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return max(1, math.floor(value)) if math.isfinite(value) else None


class LimiterStore(Protocol):
    """Shared limiter state; see the module docstring for who calls what."""

    config: StoreConfig

    async def acquire(
        self,
        pool: str,
        lease: str,
        max_wait: float,
        lease_ttl: float,
        claim: Claim | None = None,
    ) -> Admission:
        """Reserve a slot (and a concurrency lease named ``lease``) unless the wait is too long.

        When the rate changed since the waits already granted were laid out, the backlog
        first moves to the new rate: what is left of it is scaled by old rate / new rate,
        at most ``max_wait`` ahead. With a claim (``lease`` from ``lease_id``), the
        client's budgets and the fair share of the cap apply (see the module docstring).
        """
        ...

    async def report(
        self,
        pool: str,
        ticks: Mapping[int, Mapping[str, float]],
        release: Sequence[str] = (),
        tokens: Mapping[str, int] | None = None,
    ) -> None:
        """Add tick counts (sums, or extremes for MAX_FIELDS / MIN_FIELDS), release leases
        (and the waiting of requests that gave up), add clients' tokens to their day's
        count, and push what a probing limit's 429 changes (see the module docstring)."""
        ...

    async def flows(self, pool: str) -> list[Flow]:
        """The pool's flows now: leases held and requests waiting, by claim."""
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

    def freed(self, pool: str) -> AsyncIterator[int]:
        """Until closed: how many concurrency slots each release (by any replica), cap
        raise or reset freed in ``pool`` while a cap was in force; ALL_SLOTS when the cap
        was lifted. At most once: what is announced while nobody listens is not kept, so
        waiters still ask again now and then. Raises StoreUnavailable when the store
        cannot be reached (the caller listens again later)."""
        ...

    async def park(self, pool: str, seconds: float, reason: str) -> Parking:
        """Park a pool for ``seconds`` (FOREVER: until lifted): every acquire refuses with
        reason "parked" until then. A parking never shortens one already in force (the
        later end wins, and its reason). Returns the parking in force."""
        ...

    async def lift(self, pool: str) -> bool:
        """End a pool's parking now; True when it was parked."""
        ...

    async def parking(self, pool: str) -> Parking | None:
        """The pool's parking in force, or None."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""
        ...

    async def now(self) -> float:
        """The store's clock, epoch seconds."""
        ...

    async def pools(self) -> list[str]:
        """Pools that saw an acquire recently."""
        ...

    async def read_ticks(self, pool: str, first: int, last: int) -> dict[int, dict[str, float]]:
        """The counts of ticks ``first`` to ``last`` (inclusive) that hold any."""
        ...

    async def load_state(self, pool: str) -> dict[str, str] | None:
        """The pool's saved state, or None."""
        ...

    async def save_state(self, pool: str, fields: Mapping[str, str], version: int) -> bool:
        """Replace the state unless its version moved past ``version`` since it was loaded
        (a push or another step); the saved state gets ``version + 1``. True when saved."""
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


def state_version(saved: Mapping[str, str] | None) -> int:
    """The version of a loaded state (0 for none)."""
    if not saved:
        return 0
    try:
        return int(saved.get(VERSION, "0"))
    except ValueError:
        return 0
