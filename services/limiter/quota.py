"""The provider's quota windows: parsing Z.ai's quota answer, and pacing the rate so that
the remaining quota of each window lasts until its reset. No clock, no I/O.

Z.ai's quota endpoint (`GET {origin}/api/monitor/usage/quota/limit`) is undocumented; what
follows is read from public clients and the issues around them:

- Z.ai's own plugins (zai-org/zai-coding-plugins: `glm-plan-usage` query script,
  `zai-quota-hud` status line) call it on the API's origin with the bare key in
  `Authorization` (no `Bearer`); others (shekohex/openusage docs, kde-ai-usage) send
  `Bearer <key>`, and some clients try one, then the other. Both are accepted, so the
  scheme is a setting. The answer is wrapped, `{"code":200,"msg":"...","data":{"limits":
  [...],"level":"pro"},"success":true}`; a key without a coding plan gets `success:false`
  and a `msg` (steipete/CodexBar#530). `parse_quota` also takes a bare `{"limits":[...]}`.
- `type`: `TOKENS_LIMIT` is a token window, `TIME_LIMIT` a monthly count of MCP tool calls
  (web search, web reader; jukanntenn/glm-plan-usage `docs/api-research.md`), and since
  2026-09 credit-based plans report their token windows as `CREDIT_LIMIT` with the same
  unit and number (kunchenguid/quota-axi#160). `type` is therefore not the window: two
  rows can share it.
- `unit` and `number` are the window: unit 3 is hours (3/5 = the five-hour window), 6 is
  weeks (6/1 = the weekly window, added 2026-02: robinebers/openusage#242), 5 is months
  (5/1 = `TIME_LIMIT`'s month), 4 is days (openchamber/openchamber#1940). Clients that went
  by position or by the earlier reset mislabelled the windows, because a weekly window
  near its end resets before the five-hour one (SaladDay/cc-switch-cli#375,
  rygel/AIUsageTracker#759), so the name comes from unit and number only.
- `usage` is the window's *capacity*, `currentValue` what was used, `remaining` what is
  left, `percentage` the used share on a 0-100 scale, in whole percent as observed. Token
  rows often carry only `percentage` (glm-plan-usage notes the counts were dropped), so
  counts win when present and otherwise the used share moves in steps of 1%.
- `nextResetTime` is epoch milliseconds. A five-hour window that nothing has used yet may
  have no reset time (the window starts at the first request; zai-coding-plugins
  `window-manager.py`). Values below 1e11 are read as epoch seconds, as the proxy's error
  classification reads them.

Parsing never raises: any field may be missing, null, a string or of the wrong type.
Windows without a usable used share are dropped; unknown types and units are kept, named
after their type. Names are bounded (at most `MAX_WINDOWS`, short, `[a-z0-9_]`), so they
can be metric labels.

Pacing (`QuotaPacer`): per window, the cost of one admitted request in quota fraction is
estimated from successive samples as decayed sums, used-share increments over admitted
requests, with a time constant that grows with the window (a weekly window's 1% steps
take hours). The allowed pace is (remaining - reserve) / seconds until reset. A window
engages when even the low estimate of its pace (one reporting step taken off) exceeds the
allowed pace; an engaged window caps the rate at allowed pace / cost per request, which
is admitted rate x allowed / measured. It lets go only once the admitted rate stays below
`release_ratio` of its cap (demand fell, or something else holds the rate lower): while
the cap holds, the measured pace sits at the allowed pace, and releasing on pace would
make the cap flap. The cap is the minimum over windows, never below the floor; a window with
remaining <= reserve caps at the floor until its reset. No cap when pacing is off, when
no window has enough data, or when the newest sample is older than `stale_after_s`: a
dead quota endpoint must never strangle traffic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from zai_proxy.limiter.controller import DEFAULT_MIN_RATE

MAX_WINDOWS = 8
MAX_NAME_LENGTH = 40
_MAX_MESSAGE_LENGTH = 200

# Types whose rows are generation quota: named by their window alone ("5h", "weekly").
GENERATION_TYPES = frozenset({"TOKENS_LIMIT", "CREDIT_LIMIT"})
# MCP tool calls: traffic through the proxy does not spend it, so admission cannot pace it.
UNPACED_TYPES = frozenset({"TIME_LIMIT"})

# unit code -> seconds of one unit. A month is taken as 30 days.
_UNIT_SECONDS = {3: 3600.0, 4: 86400.0, 5: 30 * 86400.0, 6: 7 * 86400.0}
_UNIT_SUFFIX = {3: "h", 4: "d", 5: "mo", 6: "w"}
_SINGLE_NAMES = {5: "monthly", 6: "weekly"}

_EPOCH_MS_THRESHOLD = 1e11
# An integer percentage can move by no less than this.
_PERCENT_STEP = 0.01
_SLUG = re.compile(r"[^a-z0-9]+")

DEFAULT_RESERVE = 0.05  # QUOTA_RESERVE
DEFAULT_FLOOR_RATE = DEFAULT_MIN_RATE  # requests/s; the limiter passes RATE_LIMIT_MIN
DEFAULT_POLL_INTERVAL_S = 60.0  # QUOTA_POLL_INTERVAL
DEFAULT_STALE_AFTER_S = 3 * DEFAULT_POLL_INTERVAL_S
DEFAULT_PACE_TIME_CONSTANT_S = 1800.0
DEFAULT_PACE_WINDOW_FRACTION = 0.1
DEFAULT_RELEASE_RATIO = 0.8
# A reset time may drift by this much beyond the time between samples without meaning
# that the window started over.
RESET_SLACK_S = 60.0


@dataclass(frozen=True, slots=True)
class QuotaWindow:
    """One quota window as the provider reported it."""

    name: str
    """Unique within a sample and label-safe: "5h", "weekly", "time_limit_monthly", ..."""
    kind: str | None
    """The provider's `type` (TOKENS_LIMIT, CREDIT_LIMIT, TIME_LIMIT, ...), if any."""
    used_ratio: float
    """Share of the window's quota used, 0..1."""
    reset_at: float | None = None
    """When the window resets, epoch seconds."""
    length_s: float | None = None
    """The window's length in seconds, when unit and number tell it."""
    resolution: float = 0.0
    """The smallest step `used_ratio` is reported in (0.01 for a whole percentage)."""

    @property
    def remaining_ratio(self) -> float:
        """Share of the window's quota left, 0..1."""
        return 1.0 - self.used_ratio

    @property
    def paced(self) -> bool:
        """Whether admitted traffic spends this window (MCP tool quota does not)."""
        return self.kind is None or self.kind.upper() not in UNPACED_TYPES


@dataclass(frozen=True, slots=True)
class QuotaSample:
    """The windows of one quota answer and when it arrived (epoch seconds)."""

    at: float
    windows: tuple[QuotaWindow, ...]


def parse_quota(body: bytes | str) -> list[QuotaWindow]:
    """The windows in a quota answer (wrapped in `data` or not); [] when there are none."""
    try:
        document = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return []
    limits = _limits(document)
    windows: list[QuotaWindow] = []
    taken: set[str] = set()
    for item in limits:
        if len(windows) >= MAX_WINDOWS:
            break
        if not isinstance(item, dict):
            continue
        window = _window(item)
        if window is None:
            continue
        name = window.name
        suffix = 2
        while name in taken:
            name = f"{window.name[: MAX_NAME_LENGTH - 4]}_{suffix}"
            suffix += 1
        taken.add(name)
        windows.append(window if name == window.name else replace(window, name=name))
    return windows


def quota_error_message(body: bytes | str) -> str | None:
    """The provider's `msg` when the answer says it failed (`success: false` or a non-200
    `code`), else None."""
    try:
        document = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return None
    if not isinstance(document, dict):
        return None
    code = _number(document.get("code"))
    failed = document.get("success") is False or (code is not None and code != 200)
    if not failed:
        return None
    message = document.get("msg", document.get("message"))
    text = message if isinstance(message, str) and message else f"code {document.get('code')}"
    return text[:_MAX_MESSAGE_LENGTH]


def _limits(document: Any) -> list[Any]:
    if not isinstance(document, dict):
        return []
    data = document.get("data")
    if isinstance(data, dict) and isinstance(data.get("limits"), list):
        limits: list[Any] = data["limits"]
        return limits
    bare = document.get("limits")
    return bare if isinstance(bare, list) else []


def _window(item: Mapping[str, Any]) -> QuotaWindow | None:
    share = _used_share(item)
    if share is None:
        return None
    used_ratio, resolution = share
    raw_type = item.get("type")
    kind = raw_type.strip()[:64] if isinstance(raw_type, str) and raw_type.strip() else None
    unit = _whole(item.get("unit"))
    number = _whole(item.get("number"))
    if unit is not None and number is None:
        number = 1
    label: str | None = None
    length_s: float | None = None
    if unit in _UNIT_SECONDS and number is not None and number >= 1:
        length_s = _UNIT_SECONDS[unit] * number
        label = _SINGLE_NAMES.get(unit) if number == 1 else None
        label = label or f"{number}{_UNIT_SUFFIX[unit]}"
    return QuotaWindow(
        name=_name(kind, label),
        kind=kind,
        used_ratio=used_ratio,
        reset_at=_reset_at(item.get("nextResetTime")),
        length_s=length_s,
        resolution=resolution,
    )


def _used_share(item: Mapping[str, Any]) -> tuple[float, float] | None:
    """(used share 0..1, its reporting step), counts first, then the percentage."""
    capacity = _number(item.get("usage"))
    if capacity is not None and capacity > 0:
        used = _number(item.get("currentValue"))
        if used is not None and used >= 0:
            return _clamp(used / capacity), 1.0 / capacity
        remaining = _number(item.get("remaining"))
        if remaining is not None and remaining >= 0:
            return _clamp(1.0 - remaining / capacity), 1.0 / capacity
    percentage = _number(item.get("percentage"))
    if percentage is not None and percentage >= 0:
        return _clamp(percentage / 100.0), _PERCENT_STEP
    return None


def _name(kind: str | None, label: str | None) -> str:
    slug = _SLUG.sub("_", kind.lower()).strip("_") if kind else ""
    if not slug or kind is None or kind.upper() in GENERATION_TYPES:
        name = label or slug or "limit"
    else:
        name = f"{slug}_{label}" if label else slug
    return name[:MAX_NAME_LENGTH]


def _reset_at(value: object) -> float | None:
    number = _number(value)
    if number is None or number <= 0:
        return None
    return number / 1000.0 if number > _EPOCH_MS_THRESHOLD else number


def _number(value: object) -> float | None:
    # bool is an int subclass; `true` is not a count.
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _whole(value: object) -> int | None:
    number = _number(value)
    if number is None or number != int(number):
        return None
    return int(number)


def _clamp(ratio: float) -> float:
    return min(1.0, max(0.0, ratio))


@dataclass(frozen=True, slots=True)
class QuotaPacingParams:
    """Tuning of the quota pacer; validated on construction."""

    enabled: bool = False
    """QUOTA_PACING_ENABLED: without it the pacer only measures."""
    reserve: float = DEFAULT_RESERVE
    """Share of each window kept unspent until its reset."""
    floor_rate: float = DEFAULT_FLOOR_RATE
    """The cap never goes below this rate (requests/s)."""
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    """No cap once the newest sample is older than this (e.g. 3 poll intervals)."""
    pace_time_constant_s: float = DEFAULT_PACE_TIME_CONSTANT_S
    """Shortest memory of the cost estimate."""
    pace_window_fraction: float = DEFAULT_PACE_WINDOW_FRACTION
    """The memory grows to this fraction of a window's length when that is longer."""
    release_ratio: float = DEFAULT_RELEASE_RATIO
    """An engaged window lets go once the admitted rate stays below this share of its cap."""

    def __post_init__(self) -> None:
        for name in (
            "reserve", "floor_rate", "stale_after_s", "pace_time_constant_s",
            "pace_window_fraction", "release_ratio",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if not 0 <= self.reserve < 1:
            raise ValueError(f"reserve must be in [0, 1), got {self.reserve}")
        if self.floor_rate <= 0:
            raise ValueError(f"floor_rate must be > 0, got {self.floor_rate}")
        if self.stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be > 0, got {self.stale_after_s}")
        if self.pace_time_constant_s <= 0:
            raise ValueError(f"pace_time_constant_s must be > 0, got {self.pace_time_constant_s}")
        if not 0 <= self.pace_window_fraction <= 1:
            raise ValueError(
                f"pace_window_fraction must be in [0, 1], got {self.pace_window_fraction}"
            )
        if not 0 < self.release_ratio <= 1:
            raise ValueError(f"release_ratio must be in (0, 1], got {self.release_ratio}")


@dataclass(frozen=True, slots=True)
class WindowPace:
    """What the pacer knows about one window, for metrics."""

    name: str
    used_ratio: float
    pace: float | None
    """Measured pace in quota fraction per second at the latest admitted rate."""
    allowed_pace: float | None
    """(remaining - reserve) / seconds until reset; None without a future reset time."""
    capping: bool


@dataclass(slots=True)
class _WindowState:
    window: QuotaWindow
    at: float
    # Decayed sums since the first sample: used-share increments, admitted requests.
    spent: float = 0.0
    requests: float = 0.0
    rate: float = 0.0
    intervals: int = 0
    engaged: bool = False
    cap: float | None = None

    def cost(self) -> float | None:
        """Quota fraction per admitted request, or None without an interval with traffic."""
        if self.intervals == 0 or self.requests <= 0:
            return None
        return self.spent / self.requests

    def low_cost(self) -> float:
        """The cost with one reporting step taken off: what the samples surely show."""
        if self.requests <= 0:
            return 0.0
        return max(0.0, self.spent - self.window.resolution) / self.requests


class QuotaPacer:
    """Turns quota samples and the admitted rate into a rate cap that makes each window's
    remaining quota last until its reset."""

    def __init__(self, params: QuotaPacingParams | None = None) -> None:
        self.params = params or QuotaPacingParams()
        self._states: dict[str, _WindowState] = {}
        self._last_at: float | None = None

    @property
    def last_sample_at(self) -> float | None:
        """Epoch seconds of the newest sample observed."""
        return self._last_at

    def observe(self, at: float, windows: Iterable[QuotaWindow], admitted_rate: float) -> None:
        """Take one sample; `admitted_rate` is the requests/s the limiter admitted since the
        previous sample (its measured throughput, not its configured rate)."""
        if not math.isfinite(at):
            raise ValueError(f"sample time must be finite, got {at}")
        if not (math.isfinite(admitted_rate) and admitted_rate >= 0):
            raise ValueError(f"admitted_rate must be a number >= 0, got {admitted_rate}")
        if self._last_at is not None and at <= self._last_at:
            return  # an old or repeated sample teaches nothing
        self._last_at = at
        states: dict[str, _WindowState] = {}
        for window in windows:
            state = self._states.get(window.name)
            if state is None:
                state = _WindowState(window, at, rate=admitted_rate)
            else:
                self._advance(state, window, at, admitted_rate)
            self._engage(state, at)
            states[window.name] = state
        # A window missing from the answer is forgotten: it caps nothing any more.
        self._states = states

    def cap(self, now: float) -> float | None:
        """The rate cap in requests/s at `now`, or None when nothing needs capping."""
        params = self.params
        if not params.enabled or self._last_at is None:
            return None
        if now - self._last_at > params.stale_after_s:
            return None
        caps: list[float] = []
        for state in self._states.values():
            window = state.window
            if not window.paced or window.reset_at is None or window.reset_at <= now:
                continue
            headroom = window.remaining_ratio - params.reserve
            if headroom <= 0:
                caps.append(params.floor_rate)
                continue
            cost = state.cost()
            if not state.engaged or cost is None or cost <= 0:
                continue
            caps.append(headroom / (window.reset_at - now) / cost)
        if not caps:
            return None
        return max(params.floor_rate, min(caps))

    def paces(self, now: float) -> list[WindowPace]:
        """Per window: used share, measured and allowed pace, whether it caps."""
        paces = []
        for state in self._states.values():
            cost = state.cost()
            paces.append(
                WindowPace(
                    name=state.window.name,
                    used_ratio=state.window.used_ratio,
                    pace=None if cost is None else cost * state.rate,
                    allowed_pace=self._allowed(state.window, now),
                    capping=state.window.paced and state.engaged,
                )
            )
        return paces

    def _advance(
        self, state: _WindowState, window: QuotaWindow, at: float, admitted_rate: float
    ) -> None:
        previous = state.window
        elapsed = at - state.at
        started_over = (
            window.used_ratio < previous.used_ratio - window.resolution / 2
            or (previous.reset_at is not None and at >= previous.reset_at)
            or (
                window.reset_at is not None
                and previous.reset_at is not None
                and window.reset_at - previous.reset_at > elapsed + RESET_SLACK_S
            )
        )
        decay = math.exp(-elapsed / self._memory_s(window))
        state.spent *= decay
        state.requests *= decay
        # The interval across a reset mixes two windows: it is skipped, while what was
        # learned about the cost of a request carries over.
        if not started_over:
            state.spent += max(0.0, window.used_ratio - previous.used_ratio)
            state.requests += admitted_rate * elapsed
            state.intervals += 1
        state.window = window
        state.at = at
        state.rate = admitted_rate

    def _engage(self, state: _WindowState, at: float) -> None:
        allowed = self._allowed(state.window, at)
        cost = state.cost()
        if allowed is None or allowed <= 0 or cost is None or cost <= 0:
            state.engaged, state.cap = False, None
            return
        if not state.engaged:
            state.engaged = state.low_cost() * state.rate > allowed
        elif state.cap is not None and state.rate < self.params.release_ratio * state.cap:
            # The traffic stayed well below the cap in force: demand fell, or something
            # else holds the rate lower. Judging by pace instead would release a cap that
            # holds exactly, because the pace is low only while the cap holds it there.
            state.engaged = False
        state.cap = allowed / cost if state.engaged else None

    def _allowed(self, window: QuotaWindow, now: float) -> float | None:
        if window.reset_at is None or window.reset_at <= now:
            return None
        return max(0.0, window.remaining_ratio - self.params.reserve) / (window.reset_at - now)

    def _memory_s(self, window: QuotaWindow) -> float:
        params = self.params
        if window.length_s is None:
            return params.pace_time_constant_s
        return max(params.pace_time_constant_s, params.pace_window_fraction * window.length_s)
