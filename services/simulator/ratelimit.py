"""The simulated upstream's hidden limits: a request rate (optionally on a schedule) as a
token bucket, a fixed window or a sliding window, a concurrency cap (optionally on a
schedule), and random noise, answered the way Z.ai answers them (429 with code 1305 or
1302)."""

import math
import random
from collections import deque
from typing import Literal

from .types import Clock

# One (seconds since start, requests per second) step of a rate schedule.
Schedule = tuple[tuple[float, float], ...]

CODE_CONCURRENCY = 1302
CODE_FREQUENCY = 1305


def parse_schedule(text: str) -> Schedule:
    """Parse `"40@0,20@60,60@120"` (rate@seconds, comma separated) into sorted steps."""
    steps: list[tuple[float, float]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        rate_text, sep, at_text = item.partition("@")
        if not sep:
            raise ValueError(f"schedule step {item!r} is not of the form rate@seconds")
        try:
            rate, at = float(rate_text), float(at_text)
        except ValueError as exc:
            raise ValueError(f"schedule step {item!r} is not of the form rate@seconds") from exc
        steps.append((at, rate))
    steps.sort()
    validate_schedule(tuple(steps))
    return tuple(steps)


def validate_schedule(schedule: Schedule) -> None:
    """Raise ValueError unless every step has a finite time >= 0 and a finite rate > 0."""
    for at, rate in schedule:
        if not (math.isfinite(at) and at >= 0):
            raise ValueError(f"schedule time must be a number >= 0, got {at}")
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"schedule rate must be a number > 0, got {rate}")


LimitKind = Literal["bucket", "fixed", "sliding"]
LIMIT_KINDS: tuple[LimitKind, ...] = ("bucket", "fixed", "sliding")


class TokenBucket:
    """Admits `rate` requests per second on average with a burst of `burst` seconds' worth
    (at least one request)."""

    __slots__ = ("_burst", "_capacity", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, now: float, burst: float = 1.0) -> None:
        self._rate = rate
        self._burst = burst
        self._capacity = max(1.0, rate * burst)
        self._tokens = self._capacity
        self._updated = now

    @property
    def rate(self) -> float:
        """The refill rate in requests per second."""
        return self._rate

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate; tokens earned so far at the old rate are kept, up to the new burst."""
        self._refill(now)
        self._rate = rate
        self._capacity = max(1.0, rate * self._burst)
        self._tokens = min(self._tokens, self._capacity)

    def try_take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _refill(self, now: float) -> None:
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
            self._updated = now


class FixedWindow:
    """Admits `rate x window` requests per window of `window` seconds, counted from start."""

    __slots__ = ("_count", "_index", "_rate", "_window")

    def __init__(self, rate: float, window: float) -> None:
        self._rate, self._window = rate, window
        self._index, self._count = -1, 0

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float, now: float) -> None:
        self._rate = rate  # requests already counted in this window stay counted

    def try_take(self, now: float) -> bool:
        index = math.floor(now / self._window)
        if index != self._index:
            self._index, self._count = index, 0
        if self._count < math.floor(self._rate * self._window + 1e-9):
            self._count += 1
            return True
        return False


class SlidingWindow:
    """Admits at most `rate x window` requests in any `window` seconds (a log)."""

    __slots__ = ("_log", "_rate", "_window")

    def __init__(self, rate: float, window: float) -> None:
        self._rate, self._window = rate, window
        self._log: deque[float] = deque()

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float, now: float) -> None:
        self._rate = rate

    def try_take(self, now: float) -> bool:
        while self._log and self._log[0] <= now - self._window:
            self._log.popleft()
        if len(self._log) < math.floor(self._rate * self._window + 1e-9):
            self._log.append(now)
            return True
        return False


Limit = TokenBucket | FixedWindow | SlidingWindow


def make_limit(kind: LimitKind, rate: float, now: float, burst: float, window: float) -> Limit:
    """A hidden rate limit of one kind."""
    if kind == "bucket":
        return TokenBucket(rate, now, burst)
    if kind == "fixed":
        return FixedWindow(rate, window)
    return SlidingWindow(rate, window)


class HiddenLimiter:
    """Decides whether the upstream accepts a request, and counts the requests in flight."""

    __slots__ = (
        "_bucket",
        "_burst",
        "_caps",
        "_clock",
        "_kind",
        "_max_concurrency",
        "_next_cap_change",
        "_next_change",
        "_noise",
        "_random",
        "_schedule",
        "_started",
        "_window",
        "in_flight",
    )

    def __init__(
        self,
        rate: float | None,
        schedule: Schedule,
        max_concurrency: int | None,
        clock: Clock,
        *,
        kind: LimitKind = "bucket",
        burst: float = 1.0,
        window: float = 1.0,
        concurrency_schedule: Schedule = (),
        noise: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self._clock = clock
        self._started = clock()
        self._schedule = schedule
        self._caps = concurrency_schedule
        self._max_concurrency = max_concurrency
        self._kind, self._burst, self._window = kind, burst, window
        self._noise = noise
        self._random = random.Random(seed)
        self.in_flight = 0
        self._bucket: Limit | None = None
        # Until the first step is due the base rate applies; the pending steps are consumed
        # in order, so the hot path compares one number.
        self._next_change = schedule[0][0] if schedule else math.inf
        self._next_cap_change = concurrency_schedule[0][0] if concurrency_schedule else math.inf
        if rate is not None:
            self._bucket = make_limit(kind, rate, self._started, burst, window)

    @property
    def max_concurrency(self) -> int | None:
        """The concurrency cap in force, or None when there is none."""
        self._follow_schedule(self._clock())
        return self._max_concurrency

    def current_rate(self) -> float | None:
        """The request rate in force now, or None when the rate is unlimited."""
        self._follow_schedule(self._clock())
        return self._bucket.rate if self._bucket is not None else None

    def admit(self) -> int | None:
        """Count the request in flight and return None, or return the Z.ai code that rejects it."""
        if self._schedule or self._caps:
            self._follow_schedule(self._clock())
        if self._max_concurrency is not None and self.in_flight >= self._max_concurrency:
            return CODE_CONCURRENCY
        if self._noise and self._random.random() < self._noise:
            return CODE_FREQUENCY
        if self._bucket is not None and not self._bucket.try_take(self._clock()):
            return CODE_FREQUENCY
        self.in_flight += 1
        return None

    def release(self) -> None:
        """Mark an admitted request as finished."""
        self.in_flight -= 1

    def _follow_schedule(self, now: float) -> None:
        elapsed = now - self._started
        while elapsed >= self._next_change:
            at, rate = self._schedule[0]
            self._schedule = self._schedule[1:]
            self._next_change = self._schedule[0][0] if self._schedule else math.inf
            change_at = self._started + at
            if self._bucket is None:
                self._bucket = make_limit(self._kind, rate, change_at, self._burst, self._window)
            else:
                self._bucket.set_rate(rate, change_at)
        while elapsed >= self._next_cap_change:
            _, cap = self._caps[0]
            self._caps = self._caps[1:]
            self._next_cap_change = self._caps[0][0] if self._caps else math.inf
            self._max_concurrency = max(1, round(cap))
