"""The control loop: every tick, the leader steps the law for every pool.

Every limiter replica runs this loop; the leader lease in the store lets exactly one of
them step (a new leader takes over within a second of the old one dying: the lease lives
four ticks and is renewed every tick). A tick is stepped shortly after it ends
(``SETTLE_SECONDS``, so that the proxies' reports of it are in) and at most once: the
pool's state remembers the last tick it consumed. Pushes the store made meanwhile (a 429
that ended a probe) are folded into the law's state before it steps, and a save never
overwrites a push (the store compares versions).

The same loop runs inside the proxy when ``REDIS_URL`` is unset, over the in-memory store,
with the same quota pacing as the limiter service (``QuotaControl``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from zai_proxy.limiter import controller as law
from zai_proxy.limiter import store as s
from zai_proxy.limiter.controller import CapState, Decision, Params, RateState, State, Tick
from zai_proxy.limiter.store import LimiterStore, StoreError, parse_cap, state_version

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger("zai_proxy.limiter")

# Seconds after a tick ends before it is stepped: proxies flush reports more often.
SETTLE_SECONDS = 0.15
# A leader that fell behind (a pause, a failover) steps at most this many ticks at once;
# older ones are skipped.
MAX_TICKS_PER_STEP = 40
# The leader lease lives this many ticks.
LEASE_TICKS = 4

# Tick count names as the proxies report them -> Tick fields.
_TICK_FIELDS = {
    "sent": "sent",
    "throttled": "throttled",
    "ok": "ok",
    "rate_frequency": "limited",
    "rate_concurrency": "concurrency_limited",
    "capped": "capped",
    "latency_count": "latency_count",
}


def tick_of(index: int, counts: Mapping[str, float], tick_seconds: float) -> Tick:
    """One tick of the store's counts as the law reads it."""
    values: dict[str, object] = {
        field: int(counts.get(name, 0)) for name, field in _TICK_FIELDS.items()
    }
    ok_at, refused_at = counts.get("ok_at"), counts.get("refused_at")
    return Tick(
        start=index * tick_seconds,
        ok_at=None if ok_at is None else int(ok_at),
        refused_at=None if refused_at is None else int(refused_at),
        told=counts.get("told"),
        latency_sum=float(counts.get("latency_sum", 0.0)),
        **values,  # type: ignore[arg-type]
    )


def encode_law(state: State) -> str:
    """The law's state as JSON (infinities as the stdlib writes them)."""
    return json.dumps(asdict(state), separators=(",", ":"))


def decode_law(text: str) -> State | None:
    """A saved law state, or None when it is unreadable or from another version."""
    try:
        raw = json.loads(text)
        rate = dict(raw["rate"])
        rate["recent"] = tuple(tuple(pair) for pair in rate.get("recent", ()))
        cap = dict(raw["cap"])
        cap["answers"] = tuple(cap.get("answers", ()))
        return State(
            rate=RateState(**rate),
            cap=CapState(**cap),
            round_trip=raw.get("round_trip"),
            rate_decision=Decision(raw.get("rate_decision", "hold")),
            cap_decision=Decision(raw.get("cap_decision", "hold")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _number(text: str | None) -> float:
    try:
        return float(text) if text else -math.inf
    except ValueError:
        return -math.inf


def load_law(saved: Mapping[str, str], now: float, max_age: float, params: Params) -> State:
    """The pool's law state with the store's pushes folded in; a fresh one when there is
    none, it is unreadable, or older than ``max_age``."""
    updated = _number(saved.get("updated_at"))
    state = decode_law(saved.get("law", "")) if now - updated <= max_age else None
    if state is None:
        # Fresh; a cap pushed meanwhile (a new pool's first 1302) still counts.
        state = law.initial_state(params, now)
        updated = now - max_age
    pushed_rate = _number(saved.get(s.PUSHED_RATE))
    if pushed_rate > updated:
        state = law.rate_pushed(state, pushed_rate)
    pushed_cap = _number(saved.get(s.PUSHED_CAP))
    cap = parse_cap(saved.get(s.CONCURRENCY))
    if pushed_cap > updated and cap is not None:
        state = law.cap_pushed(state, cap, int(saved.get(s.EPOCH) or 0), pushed_cap)
    return state


def encode_state(
    state: State, params: Params, *, consumed: int, now: float, rate: float
) -> dict[str, str]:
    """The store's form of a state: the law, plus what acquire and report read."""
    r, c = state.rate, state.cap
    base = None if r.base is None else min(r.base, rate)
    return {
        "law": encode_law(state),
        s.RATE: "inf" if math.isinf(rate) else repr(rate),
        s.CONCURRENCY: "" if c.cap is None else str(c.cap),
        s.EPOCH: str(c.epoch),
        s.PROBE_BASE: "" if base is None else repr(base),
        s.CAP_BASE: "" if c.base is None else str(c.base),
        s.CAP_FLOOR: str(params.min_concurrency),
        "limit": "" if r.limit is None else repr(r.limit),
        "hold": "" if r.limit is None else repr(r.limit * (1 - params.margin)),
        "decision": state.rate_decision.value,
        "cap_decision": state.cap_decision.value,
        "probing": "1" if r.base is not None else "",
        "paused": "1" if r.paused else "",
        "consumed": str(consumed),
        "updated_at": repr(now),
    }


@dataclass(frozen=True, slots=True)
class StepResult:
    """One pool's step, for metrics and the admin API."""

    pool: str
    ticks: int  # how many ticks the step consumed
    counts: Mapping[str, float]  # their counts, summed
    state: State
    decision: Decision
    rate: float  # what acquire enforces: the law's rate, under any quota cap
    quota_cap: float | None


RateCap = Callable[[str, float], float | None]


def _step_event(result: StepResult) -> dict[str, str | int | float]:
    """A pool's step as a span event's attributes."""
    attributes: dict[str, str | int | float] = {
        "zai_proxy.limiter.pool": result.pool,
        "zai_proxy.limiter.ticks": result.ticks,
        "zai_proxy.limiter.decision": result.decision.value,
        "zai_proxy.limiter.cap_decision": result.state.cap_decision.value,
        "zai_proxy.limiter.rate": result.rate,
    }
    if result.quota_cap is not None:
        attributes["zai_proxy.limiter.quota_cap"] = result.quota_cap
    return attributes


class ControlLoop:
    """Steps the law for every active pool, once per tick, while this node leads."""

    def __init__(
        self,
        store: LimiterStore,
        params: Params,
        *,
        state_max_age: float,
        node: str | None = None,
        rate_cap: RateCap | None = None,
        on_step: Callable[[StepResult], None] | None = None,
        pools: Iterable[str] = (),
        tracer: Tracer | None = None,
    ) -> None:
        """``tracer``: a span per control step this node takes as leader (OTEL_*)."""
        self.store = store
        self.tracer = tracer
        self.params = params
        self.state_max_age = state_max_age
        self.node = node or uuid.uuid4().hex[:12]
        self.rate_cap = rate_cap
        self.on_step = on_step
        # Stepped even before a request registered them (the store's pools() lists only
        # pools that saw an acquire): the paced pool, whose quota cap must be in force
        # for its very first request.
        self.pools = frozenset(pools)
        self._offset = 0.0  # store clock minus local clock
        self.leader = False
        self.healthy = True
        self.last_results: dict[str, StepResult] = {}

    @property
    def tick_seconds(self) -> float:
        return self.store.config.tick_seconds

    async def run(self) -> None:
        """Run until cancelled; store failures are logged and retried next tick."""
        while True:
            try:
                await self.tick()
                self.healthy = True
            except StoreError as exc:
                if self.healthy:
                    log.warning("limiter store unavailable: %s", exc)
                self.healthy = False
                self.leader = False
            await asyncio.sleep(self._pause())

    def _pause(self) -> float:
        # Wake just after the next tick settles.
        tick = self.tick_seconds
        return max(0.01, tick - (time.time() + self._offset - SETTLE_SECONDS) % tick)

    async def tick(self) -> list[StepResult]:
        """Renew the lease; when leading, step every pool with its settled ticks."""
        now = await self.store.now()
        self._offset = now - time.time()
        was_leader = self.leader
        self.leader = await self.store.lead(self.node, ttl=LEASE_TICKS * self.tick_seconds)
        if self.leader != was_leader:
            log.info("limiter node %s %s", self.node, "leads" if self.leader else "follows")
        if not self.leader:
            return []
        if self.tracer is None:
            return await self._step_all(now)
        with self.tracer.start_as_current_span(
            "limiter control step", attributes={"zai_proxy.limiter.node": self.node}
        ) as span:
            results = await self._step_all(now)
            span.set_attribute("zai_proxy.limiter.pools_stepped", len(results))
            for result in results:
                span.add_event("pool stepped", _step_event(result))
        return results

    async def _step_all(self, now: float) -> list[StepResult]:
        due = self.store.config.tick_of(now - SETTLE_SECONDS) - 1
        results = []
        for pool in sorted(self.pools.union(await self.store.pools())):
            result = await self.step_pool(pool, due, now)
            if result is not None:
                results.append(result)
        return results

    async def step_pool(self, pool: str, due: int, now: float) -> StepResult | None:
        """Step one pool with the ticks up to ``due`` it has not consumed yet."""
        saved = await self.store.load_state(pool) or {}
        params = self.params_for(pool, await self.store.load_bounds(pool))
        consumed = int(_number(saved.get("consumed"))) if saved.get("consumed") else due - 1
        if consumed >= due:
            return None
        first = max(consumed + 1, due - MAX_TICKS_PER_STEP + 1)
        state = load_law(saved, now, self.state_max_age, params)
        counts = await self.store.read_ticks(pool, first, due)
        ticks = [
            tick_of(index, counts.get(index, {}), self.tick_seconds)
            for index in range(first, due + 1)
        ]
        new_state = law.step(state, ticks, now, params)
        cap = self.rate_cap(pool, new_state.rate.rate) if self.rate_cap else None
        rate = (
            new_state.rate.rate
            if cap is None
            else max(params.min_rate, min(new_state.rate.rate, cap))
        )
        fields = encode_state(new_state, params, consumed=due, now=now, rate=rate)
        if not await self.store.save_state(pool, fields, state_version(saved)):
            return None  # a push came first: this step is taken again with it next tick
        summed: dict[str, float] = {}
        for tick_counts in counts.values():
            for name, value in tick_counts.items():
                if name not in s.MAX_FIELDS and name not in s.MIN_FIELDS:
                    summed[name] = summed.get(name, 0) + value
        decision = new_state.rate_decision
        result = StepResult(pool, len(ticks), summed, new_state, decision, rate, cap)
        self.last_results[pool] = result
        if self.on_step is not None:
            self.on_step(result)
        if decision is not Decision.HOLD or new_state.cap_decision is not Decision.HOLD:
            r = new_state.rate
            log.debug(
                "pool=%s rate=%s decision=%s limit=%s cap=%s cap_decision=%s",
                pool, _rate_text(rate), decision.value,
                "none" if r.limit is None else f"{r.limit:.3f}",
                new_state.cap.cap, new_state.cap_decision.value,
            )  # fmt: skip
        return result

    def params_for(self, pool: str, bounds: Mapping[str, str]) -> Params:
        """The parameters with any bounds an operator set for this pool (PUT /bounds)."""
        try:
            return apply_bounds(self.params, bounds)
        except ValueError:
            log.warning("pool=%s ignores inconsistent saved bounds", pool)
            return self.params


def _rate_text(rate: float) -> str:
    return "none" if math.isinf(rate) else f"{rate:.3f}"


_BOUNDS: dict[str, Callable[[str], float | int]] = {
    "min_rate": float,
    "max_rate": float,
    "min_concurrency": int,
    "max_concurrency": int,
}


def apply_bounds(params: Params, bounds: Mapping[str, str]) -> Params:
    """Parameters with an operator's bounds applied; ValueError if they are inconsistent."""
    overrides = {name: parse(bounds[name]) for name, parse in _BOUNDS.items() if bounds.get(name)}
    if not overrides:
        return params
    low = overrides.get("min_rate", params.min_rate)
    high = overrides.get("max_rate", params.max_rate)
    if high is not None and low > high:
        # Said here in the operator's terms: Params would first find the initial rate
        # (moved into [low, high]) below min_rate, a setting the operator never made.
        raise ValueError(f"min_rate ({low:g}) must be <= max_rate ({high:g})")
    initial = max(params.initial_rate, low)
    if high is not None:
        initial = min(initial, high)
    return replace(params, initial_rate=initial, **overrides)  # type: ignore[arg-type]
