"""Outcome classes that proxies report after every upstream attempt, and one window of them.

Proxies count outcomes per class; the limiter sums a control window of those counts into a
`Window` and hands it to the controller. Which classes feed which limit:

- `RATE_FREQUENCY` (Z.ai 1303/1305, and any 429 without a known code) feeds the rate.
- `RATE_CONCURRENCY` (Z.ai 1302) feeds the cluster-wide concurrency cap.
- `RATE_QUOTA` (Z.ai 1308/1310) feeds neither: the five-hour or weekly quota is spent, and
  no admission rate will bring it back before its reset time.
- `RATE_CONGESTION` (Z.ai 1312, Anthropic `overloaded_error`) feeds neither either. The
  model is overloaded for every customer of the provider, not for our key: cutting our rate
  would not relieve it, and a ceiling learned from it would stay wrong long after the
  congestion clears (it only climbs back by probing). It is a transient server condition:
  the proxy retries it with back-off, like a 5xx.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from zai_proxy.shared.outcomes import Outcome


@dataclass(frozen=True, slots=True)
class Window:
    """Outcome counts of one control window, plus the demand and peak concurrency seen in it."""

    ok: int = 0
    rate_frequency: int = 0
    rate_concurrency: int = 0
    rate_quota: int = 0
    rate_congestion: int = 0
    server_error: int = 0
    network: int = 0
    client_error: int = 0
    demand: int = 0
    peak_concurrency: int | None = None

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None and field.name == "peak_concurrency":
                continue
            # bool is an int subclass; a True count is a bug upstream, not a count of one.
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Window.{field.name} must be a non-negative int, got {value!r}")

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int | str | bytes] | Mapping[bytes, int | str | bytes]
    ) -> Window:
        """Build a window from counter names to counts, as read back from a store.

        Keys are outcome names plus `demand` and `peak_concurrency`; bytes keys and values
        (a Redis hash read without decoding) are accepted; missing keys count zero (and no
        peak), unknown keys are ignored so that a newer proxy can report a new class.
        """
        known = {field.name for field in fields(cls)}
        values: dict[str, int] = {}
        for raw_key, raw_value in counts.items():
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            if key in known:
                values[key] = int(raw_value)
        return cls(**values)

    def count(self, outcome: Outcome) -> int:
        """The number of attempts of one outcome class."""
        return int(getattr(self, outcome.value))

    @property
    def attempts(self) -> int:
        """Upstream attempts of any outcome."""
        return sum(self.count(outcome) for outcome in Outcome)

    @property
    def rate_limited(self) -> int:
        """Attempts refused by a limit of any class (429s, and Anthropic's 529 overloaded)."""
        return self.rate_frequency + self.rate_concurrency + self.rate_quota + self.rate_congestion

    @property
    def frequency_ratio(self) -> float:
        """Share of attempts refused for request frequency: the signal that drives the rate."""
        return self._share(self.rate_frequency)

    @property
    def concurrency_ratio(self) -> float:
        """Share of attempts refused for concurrency: the signal that drives the concurrency cap."""
        return self._share(self.rate_concurrency)

    @property
    def rate_limited_ratio(self) -> float:
        """Share of attempts refused by a limit of any class (what an operator sees)."""
        return self._share(self.rate_limited)

    def __add__(self, other: Window) -> Window:
        """Merge two windows (for example per-second buckets): counts add, peaks take the max."""
        if not isinstance(other, Window):
            return NotImplemented
        peaks = [p for p in (self.peak_concurrency, other.peak_concurrency) if p is not None]
        return Window(
            ok=self.ok + other.ok,
            rate_frequency=self.rate_frequency + other.rate_frequency,
            rate_concurrency=self.rate_concurrency + other.rate_concurrency,
            rate_quota=self.rate_quota + other.rate_quota,
            rate_congestion=self.rate_congestion + other.rate_congestion,
            server_error=self.server_error + other.server_error,
            network=self.network + other.network,
            client_error=self.client_error + other.client_error,
            demand=self.demand + other.demand,
            peak_concurrency=max(peaks) if peaks else None,
        )

    def _share(self, count: int) -> float:
        attempts = self.attempts
        return count / attempts if attempts else 0.0
