"""Hidden limits of simulated upstreams, on a virtual clock: what the law must learn.

Each decides, when an attempt arrives, whether the upstream accepts it or answers 429
(with Z.ai's code: 1305 for a request rate, 1302 for concurrency). The limit in force is
a function of time (``Schedule``), so a scenario can halve it, triple it, or move it
every few seconds. All of them are the algorithms providers are known to use.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Schedule = Callable[[float], float]  # time -> limit in force

FREQUENCY = "rate_frequency"  # 1305
CONCURRENCY = "rate_concurrency"  # 1302


def steps(*changes: tuple[float, float]) -> Schedule:
    """A limit that takes each value from its time on: ``steps((0, 30), (30, 15))``."""
    ordered = sorted(changes)

    def limit(t: float) -> float:
        value = ordered[0][1]
        for at, v in ordered:
            if t >= at:
                value = v
        return value

    return limit


class Upstream:
    """One hidden limit; ``admit`` answers None (accepted) or the 429 class."""

    def admit(self, now: float) -> str | None:
        raise NotImplementedError

    def release(self, now: float) -> None:
        """An accepted attempt finished (concurrency limits free their slot)."""

    def capacity(self, now: float, latency: float) -> float:
        """Accepted requests per second at best, for goodput targets."""
        raise NotImplementedError


@dataclass
class TokenBucket(Upstream):
    """``limit`` requests per second with ``burst`` seconds of it saved at most (0: one)."""

    limit: Schedule
    burst: float = 1.0
    _tokens: float = -1.0
    _at: float = 0.0

    def admit(self, now: float) -> str | None:
        rate = self.limit(now)
        capacity = max(1.0, rate * self.burst)
        if self._tokens < 0:
            self._tokens = capacity
        self._tokens = min(capacity, self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return FREQUENCY

    def capacity(self, now: float, latency: float) -> float:
        return self.limit(now)


@dataclass
class FixedWindow(Upstream):
    """``limit x window`` requests per aligned window of ``window`` seconds."""

    limit: Schedule
    window: float = 1.0
    offset: float = 0.0
    _index: int = -1
    _count: int = 0

    def admit(self, now: float) -> str | None:
        index = math.floor((now + self.offset) / self.window)
        if index != self._index:
            self._index, self._count = index, 0
        if self._count < math.floor(self.limit(now) * self.window + 1e-9):
            self._count += 1
            return None
        return FREQUENCY

    def capacity(self, now: float, latency: float) -> float:
        return math.floor(self.limit(now) * self.window + 1e-9) / self.window


@dataclass
class SlidingWindow(Upstream):
    """At most ``limit x window`` accepted requests in any ``window`` seconds (a log)."""

    limit: Schedule
    window: float = 1.0

    def __post_init__(self) -> None:
        self._log: deque[float] = deque()

    def admit(self, now: float) -> str | None:
        while self._log and self._log[0] <= now - self.window:
            self._log.popleft()
        if len(self._log) < math.floor(self.limit(now) * self.window + 1e-9):
            self._log.append(now)
            return None
        return FREQUENCY

    def capacity(self, now: float, latency: float) -> float:
        return math.floor(self.limit(now) * self.window + 1e-9) / self.window


@dataclass
class Concurrency(Upstream):
    """At most ``limit`` attempts in flight."""

    limit: Schedule
    in_flight: int = 0

    def admit(self, now: float) -> str | None:
        if self.in_flight >= math.floor(self.limit(now)):
            return CONCURRENCY
        self.in_flight += 1
        return None

    def release(self, now: float) -> None:
        self.in_flight -= 1

    def capacity(self, now: float, latency: float) -> float:
        return math.floor(self.limit(now)) / latency


@dataclass
class Both(Upstream):
    """A rate limit and a concurrency limit at once (the concurrency limit decides first)."""

    rate: Upstream
    concurrency: Concurrency

    def admit(self, now: float) -> str | None:
        refused = self.concurrency.admit(now)
        if refused is not None:
            return refused
        refused = self.rate.admit(now)
        if refused is not None:
            self.concurrency.release(now)
        return refused

    def release(self, now: float) -> None:
        self.concurrency.release(now)

    def capacity(self, now: float, latency: float) -> float:
        return min(self.rate.capacity(now, latency), self.concurrency.capacity(now, latency))


@dataclass
class Noisy(Upstream):
    """Another upstream, plus a share of attempts answered 429 at random."""

    inner: Upstream
    ratio: float
    rng: random.Random

    def admit(self, now: float) -> str | None:
        if self.rng.random() < self.ratio:
            return FREQUENCY
        return self.inner.admit(now)

    def release(self, now: float) -> None:
        self.inner.release(now)

    def capacity(self, now: float, latency: float) -> float:
        return self.inner.capacity(now, latency)


@dataclass
class Storm(Upstream):
    """Another upstream that answers every attempt 429 between ``start`` and ``end``."""

    inner: Upstream
    start: float
    end: float

    def admit(self, now: float) -> str | None:
        if self.start <= now < self.end:
            return FREQUENCY
        return self.inner.admit(now)

    def release(self, now: float) -> None:
        self.inner.release(now)

    def capacity(self, now: float, latency: float) -> float:
        return self.inner.capacity(now, latency)


@dataclass
class Unlimited(Upstream):
    """No limit at all."""

    def admit(self, now: float) -> str | None:
        return None

    def capacity(self, now: float, latency: float) -> float:
        return math.inf
