"""The control loop: once per window, the leader steps the controller for every pool.

Every limiter replica runs this loop; the leader lease in the store lets exactly one of
them step each window (a new leader takes over within two windows of the old one dying:
the lease lives one window and is renewed three times per window). A window is stepped
shortly after it ends (``SETTLE_SECONDS``, so that the proxies' last reports are in) and
at most once: the pool's state remembers the last window it was stepped with.

The same loop runs inside the proxy when ``REDIS_URL`` is unset, over the in-memory store.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace

from zai_proxy.limiter.controller import (
    ControllerState,
    Decision,
    RateLimitParams,
    initial_state,
    step,
)
from zai_proxy.limiter.outcomes import Window
from zai_proxy.limiter.store import LimiterStore, StoreError

log = logging.getLogger("zai_proxy.limiter")

# Seconds after a window ends before it is stepped: proxies flush reports more often.
SETTLE_SECONDS = 0.6


def _optional_float(raw: str) -> float | None:
    return None if raw == "" else float(raw)


# How each saved ControllerState field is read back (the store keeps strings).
_DECODERS: dict[str, Callable[[str], object]] = {
    "ceiling": _optional_float,
    "concurrency_ceiling": _optional_float,
    "clean_windows": int,
    "hold_windows": int,
    "probe_streak": int,
    "concurrency_clean_windows": int,
    "concurrency_hold_windows": int,
    "concurrency_probe_streak": int,
    "probing": lambda raw: raw == "True",
    "concurrency_probing": lambda raw: raw == "True",
    "last_decision": Decision,
    "concurrency_decision": Decision,
}


def encode_state(
    state: ControllerState, window: int, window_seconds: float, now: float, effective_rate: float
) -> dict[str, str]:
    """The store's form of a state: strings, plus what acquire reads (rate, concurrency)."""
    encoded = {name: "" if value is None else str(value) for name, value in asdict(state).items()}
    encoded["controller_rate"] = encoded.pop("rate")
    encoded["concurrency_value"] = encoded.pop("concurrency")
    encoded["rate"] = repr(effective_rate)
    encoded["concurrency"] = str(state.concurrency_limit)
    encoded["window"] = str(window)
    # The end of the stepped window in seconds, not its index: indices change meaning when
    # RATE_LIMIT_WINDOW changes between restarts.
    encoded["stepped_until"] = repr((window + 1) * window_seconds)
    encoded["updated_at"] = repr(now)
    return encoded


def decode_state(saved: Mapping[str, str], now: float, max_age: float) -> ControllerState | None:
    """A saved state, or None when it is missing, unreadable or older than ``max_age``."""
    try:
        if now - float(saved["updated_at"]) > max_age:
            return None
        values: dict[str, object] = {
            "rate": float(saved["controller_rate"]),
            "concurrency": float(saved["concurrency_value"]),
        }
        for name, decode in _DECODERS.items():
            if name in saved:
                values[name] = decode(saved[name])
        return ControllerState(**values)  # type: ignore[arg-type]
    except (KeyError, ValueError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class StepResult:
    """One pool's step, for metrics and the admin API."""

    pool: str
    window: int
    counts: Mapping[str, int]
    state: ControllerState
    decision: Decision
    rate: float  # what acquire enforces: the controller's rate, under any quota cap
    quota_cap: float | None


RateCap = Callable[[str, float], float | None]


class ControlLoop:
    """Steps the controller for every active pool, once per window, while this node leads."""

    def __init__(
        self,
        store: LimiterStore,
        params: RateLimitParams,
        *,
        state_max_age: float,
        node: str | None = None,
        rate_cap: RateCap | None = None,
        on_step: Callable[[StepResult], None] | None = None,
    ) -> None:
        self.store = store
        self.params = params
        self.state_max_age = state_max_age
        self.node = node or uuid.uuid4().hex[:12]
        self.rate_cap = rate_cap
        self.on_step = on_step
        self._offset = 0.0  # store clock minus local clock
        self.leader = False
        self.healthy = True
        self.last_results: dict[str, StepResult] = {}
        self._bounds: dict[str, RateLimitParams] = {}

    @property
    def window_seconds(self) -> float:
        return self.store.config.window_seconds

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
        # Wake three times per window (lease renewal) and just after each window settles.
        window = self.window_seconds
        to_settle = window - (time.time() + self._offset - SETTLE_SECONDS) % window
        return max(0.05, min(window / 3, to_settle))

    async def tick(self) -> list[StepResult]:
        """Renew the lease; when leading, step every pool whose last window is due."""
        now = await self.store.now()
        self._offset = now - time.time()
        was_leader = self.leader
        self.leader = await self.store.lead(self.node, ttl=self.window_seconds)
        if self.leader != was_leader:
            log.info("limiter node %s %s", self.node, "leads" if self.leader else "follows")
        if not self.leader:
            return []
        due = self.store.config.window_of(now - SETTLE_SECONDS) - 1
        results = []
        for pool in await self.store.pools():
            result = await self.step_pool(pool, due, now)
            if result is not None:
                results.append(result)
        return results

    async def step_pool(self, pool: str, window: int, now: float) -> StepResult | None:
        """Step one pool with one window, unless that window was stepped already."""
        saved = await self.store.load_state(pool) or {}
        window_end = (window + 1) * self.window_seconds
        if saved.get("stepped_until") and float(saved["stepped_until"]) >= window_end - 1e-6:
            return None
        params = self.params_for(pool, await self.store.load_bounds(pool))
        state = decode_state(saved, now, self.state_max_age) or initial_state(params)
        counts = await self.store.read_window(pool, window)
        new_state, decision = step(state, Window.from_counts(counts), params)
        cap = self.rate_cap(pool, new_state.rate) if self.rate_cap else None
        rate = new_state.rate if cap is None else max(params.min_rate, min(new_state.rate, cap))
        fields_ = encode_state(new_state, window, self.window_seconds, now, rate)
        await self.store.save_state(pool, fields_)
        result = StepResult(pool, window, counts, new_state, decision, rate, cap)
        self.last_results[pool] = result
        if self.on_step is not None:
            self.on_step(result)
        if decision is not Decision.HOLD:
            log.info(
                "pool=%s window=%d decision=%s rate=%.3f ceiling=%s",
                pool, window, decision.value, rate,
                "none" if new_state.ceiling is None else f"{new_state.ceiling:.3f}",
            )  # fmt: skip
        return result

    def params_for(self, pool: str, bounds: Mapping[str, str]) -> RateLimitParams:
        """The parameters with any bounds an operator set for this pool (PUT /bounds)."""
        try:
            return apply_bounds(self.params, bounds)
        except ValueError:
            log.warning("pool=%s ignores inconsistent saved bounds", pool)
            return self.params


_BOUNDS: dict[str, Callable[[str], float | int]] = {
    "min_rate": float,
    "max_rate": float,
    "min_concurrency": int,
    "max_concurrency": int,
}


def apply_bounds(params: RateLimitParams, bounds: Mapping[str, str]) -> RateLimitParams:
    """Parameters with an operator's bounds applied; ValueError if they are inconsistent."""
    overrides = {name: parse(bounds[name]) for name, parse in _BOUNDS.items() if bounds.get(name)}
    if not overrides:
        return params
    low, high = (
        overrides.get("min_rate", params.min_rate),
        overrides.get("max_rate", params.max_rate),
    )
    initial = min(max(params.initial_rate, low), high)
    return replace(params, initial_rate=initial, **overrides)  # type: ignore[arg-type]
