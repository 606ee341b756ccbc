"""Configuration of a simulated upstream: its hidden limits and how much it remembers."""

import math
import time
from dataclasses import dataclass
from typing import Any

import orjson

from .quota import QuotaSpec, parse_quota_spec, validate_quota_spec
from .ratelimit import LIMIT_KINDS, LimitKind, Schedule, validate_schedule
from .types import Clock

DEFAULT_RECORDED_REQUESTS = 1000
DEFAULT_FAIL_FIRST_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Hidden limits of one upstream key, for requests that carry it (``Authorization:
    Bearer <key>`` or ``x-api-key``); other requests meet the simulator's own limits."""

    name: str
    """How /_sim/stats names the key."""
    key: str
    rate_limit: float | None = None
    max_concurrency: int | None = None
    quota_requests: QuotaSpec = ()
    refuse_code: int | None = None
    """Answer every generation request 429 with this Z.ai code (1113: arrears, ...)."""

    def __post_init__(self) -> None:
        if not self.name or not self.key:
            raise ValueError("a simulated key needs a name and a key")
        if self.rate_limit is not None and not (
            math.isfinite(self.rate_limit) and self.rate_limit > 0
        ):
            raise ValueError(f"key {self.name}: rate_limit must be a number > 0")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"key {self.name}: max_concurrency must be >= 1")
        validate_quota_spec(self.quota_requests)


_KEY_FIELDS = {"key", "rate_limit", "max_concurrency", "quota_requests", "refuse_code"}


def parse_keys(text: str) -> tuple[KeyLimits, ...]:
    """``--keys``: a JSON object, name -> {"key", "rate_limit"?, "max_concurrency"?,
    "quota_requests"? ("5h=100,weekly=1000"), "refuse_code"?}."""
    if not text.strip():
        return ()
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"--keys is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("--keys must be a JSON object of name -> limits")
    keys = []
    for name, fields in document.items():
        if not isinstance(fields, dict) or not set(fields) <= _KEY_FIELDS:
            raise ValueError(
                f"--keys {name}: expected an object of {', '.join(sorted(_KEY_FIELDS))}"
            )
        spec: dict[str, Any] = dict(fields)
        spec["quota_requests"] = parse_quota_spec(str(spec.get("quota_requests", "")))
        keys.append(KeyLimits(name=name, **spec))
    if len({k.key for k in keys}) < len(keys):
        raise ValueError("--keys: a key appears twice")
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Hidden limits of the simulated upstream; all optional, unlimited by default."""

    rate_limit: float | None = None
    """Requests per second before the first schedule step (None: unlimited)."""
    schedule: Schedule = ()
    """(seconds since start, requests per second) steps that change the rate."""
    max_concurrency: int | None = None
    """Requests served at once before answering 429 code 1302 (None: unlimited)."""
    limit_kind: LimitKind = "bucket"
    """How the rate is limited: a token bucket, a fixed window or a sliding window."""
    burst_seconds: float = 1.0
    """The token bucket's burst, in seconds of the rate (0: one request)."""
    window_seconds: float = 1.0
    """The fixed or sliding window's length."""
    concurrency_schedule: Schedule = ()
    """(seconds since start, cap) steps that change the concurrency cap."""
    noise: float = 0.0
    """Share of requests answered 429 (1305) at random."""
    quota_requests: QuotaSpec = ()
    """(window, capacity in accepted requests) quota windows, e.g. (("5h", 1000),)."""
    recorded_requests: int = DEFAULT_RECORDED_REQUESTS
    """How many requests with an X-Request-Id are remembered for /_sim/requests."""
    fail_first_keys: int = DEFAULT_FAIL_FIRST_KEYS
    """How many x-sim-key counters are remembered for x-sim-fail-first."""
    keys: tuple[KeyLimits, ...] = ()
    """Upstream keys with hidden limits of their own (see KeyLimits)."""
    clock: Clock = time.monotonic
    """Monotonic seconds; tests pass a fake one."""

    def __post_init__(self) -> None:
        if self.rate_limit is not None and not (
            math.isfinite(self.rate_limit) and self.rate_limit > 0
        ):
            raise ValueError(f"rate_limit must be a number > 0, got {self.rate_limit}")
        validate_schedule(self.schedule)
        validate_schedule(self.concurrency_schedule)
        if self.limit_kind not in LIMIT_KINDS:
            raise ValueError(f"limit_kind must be one of {', '.join(LIMIT_KINDS)}")
        if not (self.burst_seconds >= 0 and self.window_seconds > 0 and 0 <= self.noise < 1):
            raise ValueError("need burst_seconds >= 0, window_seconds > 0 and 0 <= noise < 1")
        validate_quota_spec(self.quota_requests)
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.recorded_requests < 1:
            raise ValueError(f"recorded_requests must be >= 1, got {self.recorded_requests}")
        if self.fail_first_keys < 1:
            raise ValueError(f"fail_first_keys must be >= 1, got {self.fail_first_keys}")
