"""The Redis key schema of the limiter: every key the proxies and the limiter share.

Keys of one pool carry the pool as a hash tag (``{pool}``), so they all hash to one slot
and every Lua script touches a single slot, as Redis Cluster requires. The two keys that
are not about one pool (the pool registry and the leader lease) stand alone and are only
used by single-key commands or scripts.

Times are Redis's own clock (``TIME``) in epoch seconds, written as ``%.17g`` strings or
ZSET scores, so that no proxy's clock skew can move a reservation.

=================================  ======  =====================  =============================
key                                type    TTL                    written by / read by
=================================  ======  =====================  =============================
``{prefix}:{pool}:state``          hash    7 days, renewed on     limiter (``save_state``, the
                                           every save             law and what acquire reads),
                                                                  ``report`` (pushes) /
                                                                  ``acquire`` (``rate``,
                                                                  ``concurrency``, ``epoch``)
``{prefix}:{pool}:bounds``         hash    none (operator         admin API (``save_bounds``) /
                                           configuration)         limiter (``load_bounds``)
``{prefix}:{pool}:tat``            string  until the TAT has      ``acquire`` / ``acquire``
                                           passed (then it is     (GCRA theoretical arrival
                                           the same as none)      time and the rate it was
                                                                  laid out at: ``"<tat>
                                                                  <rate>"``)
``{prefix}:{pool}:leases``         zset    the longest lease;     ``acquire`` adds (lease id ->
                                           expired members are    expiry), ``renew`` extends,
                                           dropped by acquire     ``report`` removes /
                                           and renew              ``acquire`` (in-flight count)
``{prefix}:{pool}:t:{tick}``       hash    tick TTL, renewed by   ``report`` (the proxies'
                                           every report           counts) / limiter
                                                                  (``read_ticks``)
``{prefix}:{pool}:replicas``       zset    the longest heartbeat  ``heartbeat`` (replica ->
                                           TTL; expired members   expiry) / ``heartbeat``,
                                           dropped by heartbeat   limiter (``replicas``)
``{prefix}:{pool}:parked``         hash    until the parking      ``park`` (``until``: store time
                                           ends (none while it    or ``forever``, ``reason``,
                                           lasts until lifted)    ``since``), ``lift`` deletes /
                                                                  ``acquire``, ``parking``
``{prefix}:{pool}:waiters``        zset    WAITING_SECONDS past   ``acquire`` (the lease ids of
                                           the last refusal       requests refused a slot that
                                                                  will ask again -> until when
                                                                  they count as waiting),
                                                                  ``report`` removes (gave up)
                                                                  / ``acquire`` (fair share)
``{prefix}:{pool}:queued``         zset    the fair horizon       ``acquire`` (a claim's lease id
                                           past the last add      -> its send time, while it
                                                                  waits for its turn at the
                                                                  rate) / ``acquire``
``{prefix}:{client:<alias>}:rpm``  string  until its TAT passes   ``acquire`` (a client's
                                                                  requests-per-minute GCRA)
``{prefix}:{client:<alias>}:       zset    the longest lease      ``acquire`` adds ("<pool>
leases``                                                          <lease>" -> expiry),
                                                                  ``renew``, ``report`` /
                                                                  ``acquire`` (concurrent
                                                                  budget)
``{prefix}:{client:<alias>}:       string  2 days                 ``report`` (tokens of the
tokens:{day}``                                                    UTC day) / ``acquire``
``{prefix}:{pool}:freed``          pubsub  none (a channel:       ``report``, ``save_state``,
                                           nothing is kept)       ``reset`` (slots freed while
                                                                  a cap is in force) /
                                                                  proxies (``freed``)
``{prefix}:pools``                 zset    tick TTL, renewed      ``acquire`` (pool -> Redis
                                           on every write;        time of registration) /
                                           members older than     limiter (``pools``)
                                           the tick TTL trimmed
``{prefix}:leader``                string  the lease TTL          limiter (``lead``)
=================================  ======  =====================  =============================

``{tick}`` is ``floor(now / tick_seconds)`` on Redis time. Tick hashes hold only the fields
ever written: a missing field is a zero count (for ``ok_at`` and ``refused_at``: none).

The pool registry is the one key ``acquire`` cannot touch from its script (another slot),
so a store registers a pool with its own small script at most once per REGISTER_SECONDS.

A client's budget keys carry the client as their hash tag (``{client:<alias>}``): a
budget holds in every pool together. ``acquire``, ``report`` and ``renew`` reach them
from the pool's script when the client has a budget (the name built in the script from
the prefix passed in), so a budgeted client's scripts touch two slots: standalone Redis,
Sentinel and Valkey run them; a Redis Cluster would refuse them (ADR 0020).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class PoolKeys:
    """The keys of one pool, all in the pool's hash slot."""

    state: str
    bounds: str
    tat: str
    leases: str
    replicas: str
    tick_prefix: str  # + tick index
    freed: str  # the pub/sub channel of slots freed
    parked: str  # why and until when the pool's key refuses work
    waiters: str  # the requests refused a slot that will ask again (the fair share)
    queued: str  # claims' reservations still ahead in the rate's backlog (the fair share)

    def tick(self, index: int) -> str:
        """The counter hash of one tick."""
        return f"{self.tick_prefix}{index}"


@lru_cache(maxsize=4096)
def pool_keys(prefix: str, pool: str) -> PoolKeys:
    """The keys of ``pool`` under ``prefix`` (cached: the hot path asks for them per request)."""
    if not pool or "{" in pool or "}" in pool:
        raise ValueError(f"a pool name must be non-empty and without braces, got {pool!r}")
    base = f"{prefix}:{{{pool}}}"
    return PoolKeys(
        state=f"{base}:state",
        bounds=f"{base}:bounds",
        tat=f"{base}:tat",
        leases=f"{base}:leases",
        replicas=f"{base}:replicas",
        tick_prefix=f"{base}:t:",
        freed=f"{base}:freed",
        parked=f"{base}:parked",
        waiters=f"{base}:waiters",
        queued=f"{base}:queued",
    )


def clients_prefix(prefix: str) -> str:
    """What a client's key names start with, up to the alias: ``{prefix}:{client:``."""
    return f"{prefix}:{{client:"


def client_base(prefix: str, client: str) -> str:
    """The start of a client's budget keys: ``{prefix}:{client:<alias>}:``."""
    return f"{clients_prefix(prefix)}{client}}}:"


def pools_key(prefix: str) -> str:
    """The registry of pools that saw an acquire recently."""
    return f"{prefix}:pools"


def leader_key(prefix: str) -> str:
    """The leader lease of the limiter replicas."""
    return f"{prefix}:leader"
