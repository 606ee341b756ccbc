"""Counters of the generation endpoints (chat completions, messages, embeddings) for
/_sim/stats."""

import orjson

from .ratelimit import HiddenLimiter


class SimulatorStats:
    """What the simulated upstream did with the requests the hidden limit applies to."""

    __slots__ = ("accepted", "max_in_flight", "rejected_429", "requests", "scripted_errors")

    def __init__(self) -> None:
        self.requests = 0
        self.accepted = 0
        self.rejected_429: dict[int, int] = {}
        self.scripted_errors = 0
        self.max_in_flight = 0

    def reject(self, code: int) -> None:
        """Count a request the hidden limit rejected with Z.ai `code`."""
        self.rejected_429[code] = self.rejected_429.get(code, 0) + 1

    def reset(self, in_flight: int) -> None:
        """Zero the counters; requests still in flight stay counted as such."""
        self.requests = 0
        self.accepted = 0
        self.rejected_429 = {}
        self.scripted_errors = 0
        self.max_in_flight = in_flight

    def to_json(self, limiter: HiddenLimiter, **extra: object) -> bytes:
        """The /_sim/stats answer, with the hidden limit in force now."""
        return orjson.dumps({**self.to_dict(limiter), **extra})

    def to_dict(self, limiter: HiddenLimiter) -> dict[str, object]:
        """The counters and the hidden limit in force now."""
        return {
            "requests": self.requests,
            "accepted": self.accepted,
            "rejected_429": {str(code): n for code, n in sorted(self.rejected_429.items())},
            "scripted_errors": self.scripted_errors,
            "in_flight": limiter.in_flight,
            "max_in_flight": self.max_in_flight,
            "limit": {
                "rate": limiter.current_rate(),
                "max_concurrency": limiter.max_concurrency,
            },
        }
