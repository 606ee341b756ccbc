"""The simulated provider quota: windows whose capacity is a number of accepted generation
requests, reported the way Z.ai's quota endpoint reports them and enforced with 429 code
1308 (the five-hour window) or 1310 (longer windows)."""

import re
import time
from collections.abc import Iterator

import orjson

from .types import Clock

# (window name, capacity in accepted requests), e.g. (("5h", 1000), ("weekly", 20000)).
QuotaSpec = tuple[tuple[str, int], ...]

CODE_QUOTA_5H = 1308
CODE_QUOTA_LONG = 1310

# Z.ai's unit codes: 3 hours, 4 days, 6 weeks (see zai_proxy.limiter.quota).
_UNITS = {"h": (3, 3600.0), "d": (4, 86400.0), "w": (6, 7 * 86400.0)}
_ALIASES = {"weekly": "1w", "daily": "1d"}
_NAME = re.compile(r"(\d+)([hdw])")


def window_shape(name: str) -> tuple[int, int, float]:
    """(Z.ai unit code, number, length in seconds) of "5h", "7d", "2w", "weekly" or "daily"."""
    match = _NAME.fullmatch(_ALIASES.get(name, name))
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"quota window {name!r} is not <n>h, <n>d, <n>w, daily or weekly")
    number = int(match.group(1))
    unit, seconds = _UNITS[match.group(2)]
    return unit, number, number * seconds


def parse_quota_spec(text: str) -> QuotaSpec:
    """Parse `"5h=1000,weekly=20000"` (window=capacity in requests, comma separated)."""
    windows: list[tuple[str, int]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, capacity = item.partition("=")
        if not sep:
            raise ValueError(f"quota window {item!r} is not of the form name=requests")
        try:
            windows.append((name.strip(), int(capacity)))
        except ValueError as exc:
            raise ValueError(f"quota window {item!r} is not of the form name=requests") from exc
    spec = tuple(windows)
    validate_quota_spec(spec)
    return spec


def validate_quota_spec(spec: QuotaSpec) -> None:
    """Raise ValueError unless every window has a known shape, a unique name and capacity >= 1."""
    names = set()
    for name, capacity in spec:
        window_shape(name)
        if name in names:
            raise ValueError(f"quota window {name!r} is given twice")
        names.add(name)
        if capacity < 1:
            raise ValueError(f"quota capacity must be >= 1, got {capacity} for {name!r}")


class _Window:
    __slots__ = ("capacity", "length", "name", "number", "period", "unit", "used")

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.unit, self.number, self.length = window_shape(name)
        self.period = 0
        self.used = 0


class SimulatedQuota:
    """Fixed windows from the simulator's start; each accepted request spends one unit of each."""

    __slots__ = ("_clock", "_started", "_wall_started", "_windows")

    def __init__(self, spec: QuotaSpec, clock: Clock) -> None:
        self._clock = clock
        self._started = clock()
        # Reset times are wall-clock epoch times; the clock that moves them is monotonic.
        self._wall_started = time.time()
        self._windows = [_Window(name, capacity) for name, capacity in spec]

    def exhausted(self) -> tuple[int, float] | None:
        """(Z.ai code, reset epoch seconds) of the spent window that resets last, or None."""
        worst: tuple[int, float] | None = None
        for window, reset_at in self._current():
            if window.used >= window.capacity and (worst is None or reset_at > worst[1]):
                code = CODE_QUOTA_5H if window.unit == 3 else CODE_QUOTA_LONG
                worst = (code, reset_at)
        return worst

    def spend(self) -> None:
        """Count one accepted request in every window."""
        for window, _ in self._current():
            window.used += 1

    def reset(self) -> None:
        """Forget what was spent in the current windows."""
        for window in self._windows:
            window.used = 0

    def to_json(self) -> bytes:
        """The quota endpoint's answer, wrapped as Z.ai wraps it."""
        limits = [
            {
                "type": "TOKENS_LIMIT",
                "unit": window.unit,
                "number": window.number,
                "usage": window.capacity,
                "currentValue": window.used,
                "remaining": max(0, window.capacity - window.used),
                "percentage": min(100, window.used * 100 // window.capacity),
                "nextResetTime": int(reset_at * 1000),
            }
            for window, reset_at in self._current()
        ]
        return quota_answer(limits)

    def _current(self) -> Iterator[tuple[_Window, float]]:
        """Each window, moved into the period that holds now, with its reset epoch time."""
        elapsed = max(0.0, self._clock() - self._started)
        for window in self._windows:
            period = int(elapsed // window.length)
            if period != window.period:
                window.period = period
                window.used = 0
            yield window, self._wall_started + (period + 1) * window.length


def quota_answer(limits: list[dict[str, object]]) -> bytes:
    """`limits` in Z.ai's wrapper, as its quota endpoint answers."""
    return orjson.dumps(
        {
            "code": 200,
            "msg": "Operation successful",
            "data": {"limits": limits, "level": "sim"},
            "success": True,
        }
    )


NO_QUOTA = quota_answer([])
