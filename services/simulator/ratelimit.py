"""The simulated upstream's hidden limits: a request rate (optionally on a schedule) and a
concurrency cap, answered the way Z.ai answers them (429 with code 1305 or 1302)."""

import math

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


class TokenBucket:
    """Admits `rate` requests per second on average with a burst of one second's worth."""

    __slots__ = ("_capacity", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, now: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
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
        self._capacity = max(1.0, rate)
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


class HiddenLimiter:
    """Decides whether the upstream accepts a request, and counts the requests in flight."""

    __slots__ = (
        "_bucket",
        "_clock",
        "_max_concurrency",
        "_next_change",
        "_schedule",
        "_started",
        "in_flight",
    )

    def __init__(
        self,
        rate: float | None,
        schedule: Schedule,
        max_concurrency: int | None,
        clock: Clock,
    ) -> None:
        self._clock = clock
        self._started = clock()
        self._schedule = schedule
        self._max_concurrency = max_concurrency
        self.in_flight = 0
        self._bucket: TokenBucket | None = None
        # Until the first step is due the base rate applies; the pending steps are consumed
        # in order, so the hot path compares one number.
        self._next_change = schedule[0][0] if schedule else math.inf
        if rate is not None:
            self._bucket = TokenBucket(rate, self._started)

    @property
    def max_concurrency(self) -> int | None:
        """The concurrency cap, or None when there is none."""
        return self._max_concurrency

    def current_rate(self) -> float | None:
        """The request rate in force now, or None when the rate is unlimited."""
        self._follow_schedule(self._clock())
        return self._bucket.rate if self._bucket is not None else None

    def admit(self) -> int | None:
        """Count the request in flight and return None, or return the Z.ai code that rejects it."""
        if self._max_concurrency is not None and self.in_flight >= self._max_concurrency:
            return CODE_CONCURRENCY
        if self._bucket is not None or self._schedule:
            now = self._clock()
            self._follow_schedule(now)
            if self._bucket is not None and not self._bucket.try_take(now):
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
                self._bucket = TokenBucket(rate, change_at)
            else:
                self._bucket.set_rate(rate, change_at)
