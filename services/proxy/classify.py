"""Classify upstream answers into limiter outcomes, and read the retry hints they carry.

Z.ai puts a business code in 429 bodies: 1302 concurrency, 1303/1305 request frequency,
1308/1310 quota exhausted and 1304 daily limit (never retried), 1312 model congestion; and
codes that say the key cannot serve at all: 1113 arrears, 1309 plan expired, 1311 model not
in the plan (classed as quota: they feed no limit). ``key_verdict`` says what such an
answer means for the key that got it (parked until a reset, parked until lifted, or only
this request's model refused). Codes arrive as strings
or numbers in one of three shapes: `{"error": {"code": ..}}`, `{"code": .., "msg": ..}`, or
Anthropic's `{"type": "error", "error": {"type": .., "code"?: ..}}`. A 429 without a known
code counts as frequency, as does Anthropic's `rate_limit_error`.

Anthropic's `overloaded_error` (HTTP 529) is classed with 1312 as congestion: both say the
provider is short of capacity for everyone, so both dialects land in one class that is
retried with back-off and does not feed the rate (see `zai_proxy.shared.outcomes`), while
dashboards still tell "provider overloaded" from "provider broken" (5xx).

Every function here is pure and total: any bytes and any header value give an answer, never
an exception. Times are seconds; `now` is a Unix timestamp passed in by the caller.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from zai_proxy.shared.outcomes import Outcome

ZAI_CODES: dict[str, Outcome] = {
    "1302": Outcome.RATE_CONCURRENCY,
    "1303": Outcome.RATE_FREQUENCY,
    "1305": Outcome.RATE_FREQUENCY,
    "1308": Outcome.RATE_QUOTA,
    "1310": Outcome.RATE_QUOTA,
    "1304": Outcome.RATE_QUOTA,
    "1113": Outcome.RATE_QUOTA,
    "1309": Outcome.RATE_QUOTA,
    "1311": Outcome.RATE_QUOTA,
    "1312": Outcome.RATE_CONGESTION,
}
# What a quota-class code says about the key: spent until the reset its message names,
# unusable until an operator lifts it, or (1311) the request's model is not in its plan,
# which says nothing about the key's other models.
SPENT_CODES: dict[str, str] = {
    "1308": "its 5-hour quota is spent (Z.ai 1308)",
    "1310": "its weekly/monthly quota is spent (Z.ai 1310)",
    "1304": "its daily call limit is reached (Z.ai 1304)",
}
UNUSABLE_CODES: dict[str, str] = {
    "1113": "its account is in arrears (Z.ai 1113)",
    "1309": "its plan has expired (Z.ai 1309)",
}
MODEL_NOT_IN_PLAN = "1311"
# A spent quota whose answer names no reset is tried again after this.
SPENT_WITHOUT_RESET_SECONDS = 60.0
ANTHROPIC_ERROR_TYPES: dict[str, Outcome] = {
    "rate_limit_error": Outcome.RATE_FREQUENCY,
    "overloaded_error": Outcome.RATE_CONGESTION,
}
ANTHROPIC_OVERLOADED_STATUS = 529

# Z.ai writes quota reset times ("Your limit will reset at 2026-11-27 10:00:00") without a
# zone. Z.ai (Zhipu) is a Chinese provider, so they are read as China Standard Time, UTC+8.
# A fixed offset rather than zoneinfo("Asia/Shanghai"): China has no daylight saving time,
# and a fixed offset needs no tz database in a slim container image.
ZAI_RESET_TIMEZONE = timezone(timedelta(hours=8), "Asia/Shanghai")

# The longest wait any hint may ask for: a weekly quota window. Longer is an upstream bug.
MAX_RETRY_AFTER_SECONDS = 7 * 24 * 3600.0

# Error bodies are small; a huge one is not worth parsing on the proxy's response path.
_MAX_BODY_BYTES = 64 * 1024
# Keys whose value is a wait in seconds, and keys whose value is a point in time.
_DELAY_KEYS = ("retry_after", "retryAfter", "retry_after_seconds")
_RESET_KEYS = (
    "nextResetTime", "next_reset_time", "resetTime", "reset_time",
    "resetAt", "reset_at", "resets_at",
)  # fmt: skip
_SEARCH_DEPTH = 4
# Epoch numbers above this are milliseconds (1e11 seconds is the year 5138).
_EPOCH_MS_THRESHOLD = 1e11

_DELAY_SECONDS = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
_RESET_AT = re.compile(
    r"reset(?:s)?\s+(?:at|on)\s+"
    r"(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)",
    re.IGNORECASE | re.ASCII,
)
_UNIT_SECONDS = {
    **dict.fromkeys(("ms", "millisecond", "milliseconds"), 0.001),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
}
_RETRY_IN = re.compile(
    r"(?:retry|try\s+again)\s+(?:after|in)\s+(\d+(?:\.\d+)?)(?![\d.:/-])\s*"
    rf"({'|'.join(sorted(_UNIT_SECONDS, key=len, reverse=True))})?\b",
    re.IGNORECASE | re.ASCII,
)


def classify_status(status: int, body: bytes) -> Outcome:
    """The outcome class of one upstream answer, from its status and (for errors) its body."""
    if 200 <= status < 400:
        return Outcome.OK
    if 400 <= status < 500 and status != 429:
        return Outcome.CLIENT_ERROR
    code, error_type = _error_fields(body)
    if status == 429:
        if code in ZAI_CODES:
            return ZAI_CODES[code]
        return ANTHROPIC_ERROR_TYPES.get(error_type or "", Outcome.RATE_FREQUENCY)
    congested = code == "1312" or error_type == "overloaded_error"
    if status == ANTHROPIC_OVERLOADED_STATUS or congested:
        return Outcome.RATE_CONGESTION
    return Outcome.SERVER_ERROR


@dataclass(frozen=True, slots=True)
class KeyVerdict:
    """What a quota-class answer says about the upstream key that got it."""

    park: bool  # False: only this request moves to another key (1311)
    seconds: float  # how long to park (infinity: until lifted)
    reason: str  # for logs, the admin API and the all-parked answer (never the key)


def key_verdict(body: bytes, hint: float | None) -> KeyVerdict | None:
    """The verdict of a 429 body on its key, given the answer's retry hint (Retry-After
    or the reset time in the message, in seconds); None for a code that says nothing
    about the key."""
    code = error_code(body)
    if code in SPENT_CODES:
        seconds = SPENT_WITHOUT_RESET_SECONDS if hint is None else max(1.0, hint)
        return KeyVerdict(True, seconds, SPENT_CODES[code])
    if code in UNUSABLE_CODES:
        return KeyVerdict(True, math.inf, UNUSABLE_CODES[code])
    if code == MODEL_NOT_IN_PLAN:
        return KeyVerdict(False, 0.0, "the model is not in its plan (Z.ai 1311)")
    return None


def error_code(body: bytes) -> str | None:
    """The provider's error code in an error body, as a string; None if there is none."""
    return _error_fields(body)[0]


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if unusable.

    A date already past means "now" (0.0); negative or malformed values give None; waits
    longer than a weekly quota window are capped.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        return _capped(float(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # RFC 9110 HTTP-dates are GMT; "-0000" parses as naive.
        when = when.replace(tzinfo=UTC)
    return _until(when.timestamp(), now)


def body_retry_hint(body: bytes, now: float) -> float | None:
    """Seconds to wait according to an error body's own hints; None if it gives none.

    Structured fields win over prose: a wait in seconds (`retry_after`), or a reset time
    (`nextResetTime` in epoch seconds or milliseconds, or an ISO string). Then the message
    text: "Your limit will reset at 2026-11-27 10:00:00" (read as UTC+8 when it names no
    zone, see `ZAI_RESET_TIMEZONE`), or "retry after 3s" / "please try again in 2 seconds".
    """
    document = _json(body)
    if document is not None:
        delay = _number(_find(document, _DELAY_KEYS, _SEARCH_DEPTH))
        if delay is not None and delay >= 0:
            return _capped(delay)
        reset = _reset_timestamp(_find(document, _RESET_KEYS, _SEARCH_DEPTH))
        if reset is not None:
            return _until(reset, now)
    text = body[:_MAX_BODY_BYTES].decode("utf-8", errors="replace")
    match = _RESET_AT.search(text)
    if match:
        reset = _iso_timestamp(match.group(1))
        if reset is not None:
            return _until(reset, now)
    match = _RETRY_IN.search(text)
    if match:
        unit = (match.group(2) or "s").lower()
        return _capped(float(match.group(1)) * _UNIT_SECONDS[unit])
    return None


def _json(body: bytes) -> Any:
    if not body or len(body) > _MAX_BODY_BYTES:
        return None
    try:
        return orjson.loads(body)
    except (ValueError, TypeError, RecursionError):
        return None


def _error_fields(body: bytes) -> tuple[str | None, str | None]:
    """The error code (any of the three shapes) and the Anthropic error type, if present."""
    document = _json(body)
    if not isinstance(document, dict):
        return None, None
    error = document.get("error")
    if not isinstance(error, dict):
        return _code_text(document.get("code")), None
    error_type = error.get("type")
    code = _code_text(error.get("code"))
    if code is None:
        code = _code_text(document.get("code"))
    return code, error_type if isinstance(error_type, str) else None


def _code_text(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _find(document: Any, keys: tuple[str, ...], depth: int) -> Any:
    """The value of the first of `keys` found breadth-first in nested objects, or None."""
    level = [document]
    for _ in range(depth):
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                for key in keys:
                    if item.get(key) is not None:
                        return item[key]
                below.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                below.extend(v for v in item if isinstance(v, dict | list))
        level = below
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and _DELAY_SECONDS.fullmatch(value.strip()):
        number = float(value.strip())
    else:
        return None
    return number if math.isfinite(number) else None


def _reset_timestamp(value: object) -> float | None:
    number = _number(value)
    if number is not None:
        return number / 1000 if number > _EPOCH_MS_THRESHOLD else number
    if isinstance(value, str):
        return _iso_timestamp(value.strip())
    return None


def _iso_timestamp(text: str) -> float | None:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZAI_RESET_TIMEZONE)
    try:
        return when.timestamp()
    except (OverflowError, ValueError):
        return None


def _until(timestamp: float, now: float) -> float | None:
    if not math.isfinite(timestamp) or not math.isfinite(now):
        return None
    return _capped(max(0.0, timestamp - now))


def _capped(seconds: float) -> float | None:
    if math.isnan(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)
