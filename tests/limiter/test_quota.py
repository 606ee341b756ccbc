"""Quota windows: parsing Z.ai's answer, pacing the rate to each window's reset, polling."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from zai_proxy.limiter.quota import (
    MAX_NAME_LENGTH,
    MAX_WINDOWS,
    QuotaPacer,
    QuotaPacingParams,
    QuotaSample,
    QuotaWindow,
    parse_quota,
    quota_error_message,
)
from zai_proxy.limiter.quota_poller import (
    QUOTA_PATH,
    QuotaPoller,
    QuotaPollerConfig,
    quota_url,
)
from zai_proxy.simulator.process import start_simulator

NOW = 1_770_000_000.0
HOUR = 3600.0
FIVE_HOURS = 5 * HOUR
WEEK = 7 * 24 * HOUR
KEY = "sk-quota-secret-0123456789"

# Shaped like the answers clients published (see the module docstring of `quota`): a
# five-hour and a weekly token window, and the monthly MCP tool window.
REAL_ANSWER = {
    "code": 200,
    "msg": "Operation successful",
    "data": {
        "limits": [
            {
                "type": "TIME_LIMIT",
                "unit": 5,
                "number": 1,
                "usage": 100,
                "currentValue": 28,
                "remaining": 72,
                "percentage": 28,
                "nextResetTime": 1772615765983,
                "usageDetails": [{"modelCode": "search-prime", "usage": 67}],
            },
            {
                "type": "TOKENS_LIMIT",
                "unit": 3,
                "number": 5,
                "usage": 40000000,
                "currentValue": 13050812,
                "remaining": 26949188,
                "percentage": 32,
                "nextResetTime": 1770565089893,
            },
            {
                "type": "TOKENS_LIMIT",
                "unit": 6,
                "number": 1,
                "percentage": 9,
                "nextResetTime": 1771000000000,
            },
        ],
        "level": "pro",
    },
    "success": True,
}


def _one(item: dict[str, object]) -> QuotaWindow:
    windows = parse_quota(orjson.dumps({"limits": [item]}))
    assert len(windows) == 1
    return windows[0]


# -- parsing -------------------------------------------------------------------------


def test_a_real_answer_gives_named_windows_with_ratios_and_reset_times() -> None:
    windows = {window.name: window for window in parse_quota(orjson.dumps(REAL_ANSWER))}
    assert list(windows) == ["time_limit_monthly", "5h", "weekly"]
    five = windows["5h"]
    assert five.kind == "TOKENS_LIMIT"
    assert five.used_ratio == pytest.approx(13050812 / 40000000)
    assert five.remaining_ratio == pytest.approx(26949188 / 40000000)
    assert five.reset_at == pytest.approx(1770565089.893)
    assert five.length_s == FIVE_HOURS
    assert five.resolution == pytest.approx(1 / 40000000)
    weekly = windows["weekly"]
    assert weekly.used_ratio == pytest.approx(0.09)
    assert weekly.resolution == pytest.approx(0.01)
    assert weekly.length_s == WEEK
    assert windows["time_limit_monthly"].used_ratio == pytest.approx(0.28)


def test_the_mcp_tool_window_is_measured_but_not_paced() -> None:
    windows = {window.name: window for window in parse_quota(orjson.dumps(REAL_ANSWER))}
    assert windows["5h"].paced and windows["weekly"].paced
    assert not windows["time_limit_monthly"].paced


def test_an_unwrapped_answer_parses_the_same() -> None:
    bare = orjson.dumps(REAL_ANSWER["data"])
    assert parse_quota(bare) == parse_quota(orjson.dumps(REAL_ANSWER))


@pytest.mark.parametrize(
    ("item", "name", "used", "reset_at", "length"),
    [
        # numbers as strings
        (
            {"type": "TOKENS_LIMIT", "unit": "3", "number": "5", "usage": "200",
             "currentValue": "50", "nextResetTime": "1770565089893"},
            "5h", 0.25, 1770565089.893, FIVE_HOURS,
        ),
        # only what is left
        ({"unit": 6, "number": 1, "usage": 100, "remaining": 40}, "weekly", 0.6, None, WEEK),
        # credit plans name their token windows CREDIT_LIMIT
        ({"type": "CREDIT_LIMIT", "unit": 3, "number": 5, "percentage": 47}, "5h", 0.47, None,
         FIVE_HOURS),
        # a unit without a number is one of it
        ({"type": "TOKENS_LIMIT", "unit": 4, "percentage": 1}, "1d", 0.01, None, 86400.0),
        ({"type": "TOKENS_LIMIT", "unit": 6, "number": 2, "percentage": 1}, "2w", 0.01, None,
         2 * WEEK),
        # unknown unit: named by its type, no length
        ({"type": "TOKENS_LIMIT", "unit": 99, "number": 1, "percentage": 10}, "tokens_limit",
         0.1, None, None),
        # unknown type: kept, named by type and window
        ({"type": "Foo-Limit", "unit": 3, "number": 1, "percentage": 10}, "foo_limit_1h", 0.1,
         None, HOUR),
        # no type, no unit
        ({"percentage": 12.5}, "limit", 0.125, None, None),
        # epoch seconds are accepted, nonsense reset times are not
        ({"unit": 3, "number": 5, "percentage": 0, "nextResetTime": 1770565089}, "5h", 0.0,
         1770565089.0, FIVE_HOURS),
        ({"unit": 3, "number": 5, "percentage": 0, "nextResetTime": "soon"}, "5h", 0.0, None,
         FIVE_HOURS),
        ({"unit": 3, "number": 5, "percentage": 0, "nextResetTime": None}, "5h", 0.0, None,
         FIVE_HOURS),
        # over the limit reads as all used; a zero capacity falls back to the percentage
        ({"usage": 10, "currentValue": 15}, "limit", 1.0, None, None),
        ({"percentage": 150}, "limit", 1.0, None, None),
        ({"usage": 0, "currentValue": 0, "percentage": 30}, "limit", 0.3, None, None),
        # true is not a number
        ({"usage": True, "currentValue": 1, "percentage": 20, "unit": True}, "limit", 0.2, None,
         None),
    ],
)  # fmt: skip
def test_fields_are_read_defensively(
    item: dict[str, object],
    name: str,
    used: float,
    reset_at: float | None,
    length: float | None,
) -> None:
    window = _one(item)
    assert window.name == name
    assert window.used_ratio == pytest.approx(used)
    assert window.reset_at == (None if reset_at is None else pytest.approx(reset_at))
    assert window.length_s == length


@pytest.mark.parametrize(
    "item",
    [
        {"type": "TOKENS_LIMIT", "unit": 3, "number": 5},
        {"percentage": None, "usage": "lots"},
        {"percentage": -3},
        {"percentage": "NaN"},
        {"percentage": [1]},
    ],
)
def test_a_window_without_a_used_share_is_dropped(item: dict[str, object]) -> None:
    assert parse_quota(orjson.dumps({"limits": [item]})) == []


def test_windows_that_share_a_name_are_told_apart() -> None:
    body = {"limits": [{"type": "TOKENS_LIMIT", "percentage": p} for p in (1, 2, 3)]}
    assert [window.name for window in parse_quota(orjson.dumps(body))] == [
        "tokens_limit",
        "tokens_limit_2",
        "tokens_limit_3",
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"null",
        b"[]",
        b'"limits"',
        b'{"data": null}',
        b'{"data": {"limits": "unexpected"}}',
        b'{"code": 200, "data": {"limits": null}, "success": true}',
        b'{"limits": [1, "two", null, []]}',
        b'{"code": 1001, "msg": "no coding plan", "success": false}',
    ],
)
def test_garbage_gives_no_windows(body: bytes) -> None:
    assert parse_quota(body) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"code": 500, "msg": "no coding plan", "success": false}', "no coding plan"),
        (b'{"code": 401, "success": false}', "code 401"),
        (b'{"code": "1001", "msg": "bad key"}', "bad key"),
        (orjson.dumps(REAL_ANSWER), None),
        (b"not json", None),
        (b"[]", None),
    ],
)
def test_a_failed_answer_yields_its_message(body: bytes, message: str | None) -> None:
    assert quota_error_message(body) == message


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.integers()
    | st.floats()
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
field_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**15), max_value=10**15)
    | st.floats()
    | st.sampled_from(["", "3", "5", "1e3", "-1", "NaN", "inf", "TOKENS_LIMIT", "x" * 80])
    | st.lists(st.integers(), max_size=2)
)
limit_items = st.dictionaries(
    st.sampled_from(
        [
            "type",
            "unit",
            "number",
            "usage",
            "currentValue",
            "remaining",
            "percentage",
            "nextResetTime",
            "other",
        ]
    ),
    field_values,
)
answers = st.builds(
    lambda items, wrapped: (
        {"code": 200, "data": {"limits": items}} if wrapped else {"limits": items}
    ),
    st.lists(limit_items | json_values, max_size=12),
    st.booleans(),
)


def _sane(windows: list[QuotaWindow]) -> None:
    assert len(windows) <= MAX_WINDOWS
    assert len({window.name for window in windows}) == len(windows)
    for window in windows:
        assert re.fullmatch(r"[a-z0-9_]+", window.name)
        assert len(window.name) <= MAX_NAME_LENGTH
        assert 0.0 <= window.used_ratio <= 1.0
        assert window.reset_at is None or (math.isfinite(window.reset_at) and window.reset_at > 0)


@settings(max_examples=300, deadline=None)
@given(answers)
def test_any_answer_parses_without_raising_into_sane_windows(answer: object) -> None:
    # the standard library writes what orjson refuses: big integers, Infinity
    _sane(parse_quota(json.dumps(answer).encode()))


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_parses_without_raising(value: object) -> None:
    body = json.dumps(value).encode()
    _sane(parse_quota(body))
    quota_error_message(body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_parse_without_raising(body: bytes) -> None:
    _sane(parse_quota(body))
    quota_error_message(body)


# -- pacing --------------------------------------------------------------------------

PACING = QuotaPacingParams(enabled=True)


def _window(
    used: float,
    reset_at: float | None,
    *,
    name: str = "5h",
    kind: str = "TOKENS_LIMIT",
    length: float | None = FIVE_HOURS,
    resolution: float = 1e-6,
) -> QuotaWindow:
    return QuotaWindow(name, kind, min(1.0, used), reset_at, length, resolution)


def _feed(
    pacer: QuotaPacer,
    *,
    used: float,
    pace: float,
    rate: float,
    reset_at: float,
    samples: int,
    step: float = 60.0,
) -> tuple[float, float]:
    """Samples of one window whose use grows at `pace` per second; (last time, last used)."""
    at = NOW
    for _ in range(samples):
        pacer.observe(at, [_window(used, reset_at)], rate)
        at += step
        used += pace * step
    return at - step, used - pace * step


def _allowed(used: float, reset_at: float, now: float, reserve: float = 0.05) -> float:
    return (1 - used - reserve) / (reset_at - now)


def test_a_sustainable_pace_gets_no_cap() -> None:
    pacer = QuotaPacer(PACING)
    reset_at = NOW + 4 * HOUR
    half_the_allowed_pace = _allowed(0.1, reset_at, NOW) / 2
    at, _ = _feed(
        pacer, used=0.1, pace=half_the_allowed_pace, rate=10, reset_at=reset_at, samples=10
    )
    assert pacer.cap(at) is None
    assert [pace.capping for pace in pacer.paces(at)] == [False]


@pytest.mark.parametrize("too_fast", [1.5, 2.0, 4.0])
def test_a_pace_too_fast_is_capped_in_proportion(too_fast: float) -> None:
    pacer = QuotaPacer(PACING)
    reset_at = NOW + 4 * HOUR
    pace = too_fast * _allowed(0.1, reset_at, NOW)
    at, used = _feed(pacer, used=0.1, pace=pace, rate=10, reset_at=reset_at, samples=10)
    # admitted rate x allowed / measured, at the allowed pace of the moment
    assert pacer.cap(at) == pytest.approx(10 * _allowed(used, reset_at, at) / pace, rel=1e-3)


@pytest.mark.parametrize("reserve", [0.0, 0.05, 0.2])
def test_the_cap_keeps_the_reserve(reserve: float) -> None:
    pacer = QuotaPacer(QuotaPacingParams(enabled=True, reserve=reserve))
    reset_at = NOW + 2 * HOUR
    pace = 1e-4  # 0.72 per 2 h: too fast for any of the reserves from 0.3 used
    at, used = _feed(pacer, used=0.3, pace=pace, rate=8, reset_at=reset_at, samples=5)
    allowed = _allowed(used, reset_at, at, reserve)
    assert pacer.cap(at) == pytest.approx(8 * allowed / pace, rel=1e-3)


def test_an_exhausted_window_caps_at_the_floor_until_its_reset() -> None:
    pacer = QuotaPacer(QuotaPacingParams(enabled=True, floor_rate=0.25))
    reset_at = NOW + HOUR
    pacer.observe(NOW, [_window(0.96, reset_at)], 50.0)
    assert pacer.cap(NOW) == 0.25
    assert pacer.cap(NOW + 100) == 0.25
    assert pacer.cap(reset_at + 1) is None


def test_the_cap_never_goes_below_the_floor() -> None:
    pacer = QuotaPacer(QuotaPacingParams(enabled=True, floor_rate=2.0))
    reset_at = NOW + 4 * HOUR
    at, _ = _feed(pacer, used=0.1, pace=1e-3, rate=10, reset_at=reset_at, samples=5)
    assert pacer.cap(at) == 2.0


def test_pacing_off_measures_but_never_caps() -> None:
    pacer = QuotaPacer(QuotaPacingParams(enabled=False))
    at, used = _feed(pacer, used=0.5, pace=1e-4, rate=10, reset_at=NOW + HOUR, samples=5)
    assert pacer.cap(at) is None
    (pace,) = pacer.paces(at)
    assert pace.pace == pytest.approx(1e-4)
    assert pace.allowed_pace == pytest.approx(_allowed(used, NOW + HOUR, at))


def test_one_sample_is_not_enough_to_cap() -> None:
    pacer = QuotaPacer(PACING)
    pacer.observe(NOW, [_window(0.5, NOW + 60)], 100.0)
    assert pacer.cap(NOW) is None


def test_a_window_without_traffic_or_reset_time_caps_nothing() -> None:
    pacer = QuotaPacer(PACING)
    _feed(pacer, used=0.5, pace=1e-3, rate=0.0, reset_at=NOW + HOUR, samples=5)
    assert pacer.cap(NOW + 240) is None
    pacer = QuotaPacer(PACING)
    for step in range(5):
        pacer.observe(NOW + 60 * step, [_window(0.5 + 0.06 * step, None)], 10.0)
    assert pacer.cap(NOW + 240) is None


def test_stale_data_lifts_the_cap() -> None:
    pacer = QuotaPacer(QuotaPacingParams(enabled=True, stale_after_s=180))
    at, _ = _feed(pacer, used=0.96, pace=1e-5, rate=10, reset_at=NOW + 5 * HOUR, samples=3)
    assert pacer.cap(at + 179) is not None
    assert pacer.cap(at + 181) is None


def test_a_used_share_that_drops_started_a_new_window() -> None:
    pacer = QuotaPacer(PACING)
    reset_at = NOW + HOUR
    at, _ = _feed(pacer, used=0.5, pace=2e-4, rate=10, reset_at=reset_at, samples=5)
    capped = pacer.cap(at)
    assert capped is not None
    cost = 2e-4 / 10  # quota fraction per request
    # The window reset between samples: the drop is not a negative pace, and the cost of
    # a request carries over into the new window's cap.
    new_reset = reset_at + FIVE_HOURS
    pacer.observe(at + 60, [_window(0.0, new_reset)], capped)
    (after,) = pacer.paces(at + 60)
    assert after.pace == pytest.approx(cost * capped)
    assert pacer.cap(at + 60) == pytest.approx(_allowed(0.0, new_reset, at + 60) / cost)


def test_a_reset_time_that_moved_forward_started_a_new_window() -> None:
    pacer = QuotaPacer(PACING)
    reset_at = NOW + HOUR
    at, used = _feed(pacer, used=0.3, pace=1e-5, rate=10, reset_at=reset_at, samples=4)
    (before,) = pacer.paces(at)
    # The provider renewed the window (its share happens to read higher): the jump is not
    # spending, so the measured cost stays as it was.
    pacer.observe(at + 60, [_window(used + 0.2, reset_at + FIVE_HOURS)], 10)
    (after,) = pacer.paces(at + 60)
    assert before.pace is not None and after.pace == pytest.approx(before.pace)


def test_a_window_that_reached_its_reset_time_caps_nothing_more() -> None:
    pacer = QuotaPacer(PACING)
    reset_at = NOW + HOUR
    at, _ = _feed(pacer, used=0.5, pace=5e-4, rate=10, reset_at=reset_at, samples=3)
    assert pacer.cap(at) is not None
    assert pacer.cap(reset_at) is None


def test_the_tightest_window_sets_the_cap() -> None:
    pacer = QuotaPacer(PACING)
    five_reset, week_reset = NOW + 4 * HOUR, NOW + 2 * 24 * HOUR
    for step in range(6):
        at = NOW + 60 * step
        pacer.observe(
            at,
            [
                _window(0.1 + 1e-5 * 60 * step, five_reset),
                _window(0.8 + 5e-6 * 60 * step, week_reset, name="weekly", length=WEEK),
            ],
            10.0,
        )
    at = NOW + 300
    weekly_allowed = _allowed(0.8 + 5e-6 * 300, week_reset, at)
    assert pacer.cap(at) == pytest.approx(10 * weekly_allowed / 5e-6, rel=1e-3)
    assert {pace.name: pace.capping for pace in pacer.paces(at)} == {"5h": False, "weekly": True}


def test_the_mcp_tool_window_never_caps() -> None:
    pacer = QuotaPacer(PACING)
    tools = _window(1.0, NOW + HOUR, name="time_limit_monthly", kind="TIME_LIMIT")
    pacer.observe(NOW, [tools], 10.0)
    assert pacer.cap(NOW) is None


def test_the_cap_lets_go_when_demand_falls_below_it() -> None:
    pacer = QuotaPacer(PACING)
    reset_at = NOW + 4 * HOUR
    at, used = _feed(pacer, used=0.1, pace=2e-4, rate=10, reset_at=reset_at, samples=5)
    cap = pacer.cap(at)
    assert cap is not None
    # Capped traffic at the cap keeps it; traffic well below it releases it.
    cost = 2e-4 / 10
    pacer.observe(at + 60, [_window(used + cost * cap * 60, reset_at)], cap)
    assert pacer.cap(at + 60) is not None
    used += cost * cap * 60
    pacer.observe(at + 120, [_window(used + cost * cap * 0.3 * 60, reset_at)], cap * 0.3)
    assert pacer.cap(at + 120) is None


def test_old_or_repeated_samples_are_ignored() -> None:
    pacer = QuotaPacer(PACING)
    at, _ = _feed(pacer, used=0.1, pace=2e-4, rate=10, reset_at=NOW + 4 * HOUR, samples=5)
    before = pacer.cap(at)
    pacer.observe(at, [_window(0.99, NOW + 4 * HOUR)], 10)
    pacer.observe(at - 60, [_window(0.99, NOW + 4 * HOUR)], 10)
    assert pacer.cap(at) == before


@pytest.mark.parametrize(
    "params",
    [
        {"reserve": 1.0},
        {"reserve": -0.1},
        {"floor_rate": 0},
        {"stale_after_s": 0},
        {"pace_time_constant_s": math.inf},
        {"pace_window_fraction": 2},
        {"release_ratio": 0},
        {"reserve": True},
        {"reserve": "0.05"},
    ],
)
def test_unusable_pacing_params_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        QuotaPacingParams(**params)


@pytest.mark.parametrize(("at", "rate"), [(math.nan, 1.0), (NOW, -1.0), (NOW, math.inf)])
def test_unusable_samples_are_refused(at: float, rate: float) -> None:
    with pytest.raises(ValueError):
        QuotaPacer(PACING).observe(at, [], rate)


def _simulate(
    windows: dict[str, tuple[float, float, float, float]],
    demand: float,
    *,
    percent_only: bool,
    duration: float,
    step: float = 60.0,
) -> dict[str, float]:
    """Run traffic through the pacer: name -> (capacity in requests, length, reset in,
    share used at the start). Each admitted request spends one unit of every window.
    The used share at each window's reset (or at the end)."""
    pacer = QuotaPacer(PACING)
    used = {name: capacity * start for name, (capacity, _, _, start) in windows.items()}
    at_reset: dict[str, float] = {}
    rate = demand
    now = NOW
    while now < NOW + duration:
        reported = []
        for name, (capacity, length, reset_in, _) in windows.items():
            share = used[name] / capacity
            if percent_only:
                share = math.floor(share * 100) / 100
            resolution = 0.01 if percent_only else 1 / capacity
            window = _window(share, NOW + reset_in, name=name, length=length, resolution=resolution)
            reported.append(window)
        pacer.observe(now, reported, rate)
        cap = pacer.cap(now)
        rate = demand if cap is None else min(demand, cap)
        for name, (_, _, reset_in, _) in windows.items():
            if now + step <= NOW + reset_in:
                used[name] += rate * step
            else:
                at_reset.setdefault(name, used[name] / windows[name][0])
        now += step
    return {name: at_reset.get(name, used[name] / windows[name][0]) for name in windows}


@pytest.mark.parametrize("percent_only", [False, True])
@pytest.mark.parametrize("overdemand", [1.3, 3.0, 30.0])
def test_the_cap_makes_the_quota_last_until_the_reset(
    percent_only: bool, overdemand: float
) -> None:
    capacity = 10_000.0  # requests in five hours: sustainable at 0.556 requests/s
    demand = overdemand * capacity / FIVE_HOURS
    (used,) = _simulate(
        {"5h": (capacity, FIVE_HOURS, FIVE_HOURS, 0.0)},
        demand,
        percent_only=percent_only,
        duration=FIVE_HOURS,
    ).values()
    # The first minute runs unpaced (no data yet); 30x demand spends 3% in it.
    assert used <= 1 - PACING.reserve + 0.01
    assert used >= 1 - PACING.reserve - 0.03  # the quota is used, not strangled


def test_a_nearly_spent_weekly_window_holds_back_a_fresh_five_hour_window() -> None:
    day = 24 * HOUR
    windows = {
        "5h": (10_000.0, FIVE_HOURS, FIVE_HOURS, 0.0),
        # 15% left for the weekly window's last day: 10% above the reserve
        "weekly": (100_000.0, WEEK, day, 0.85),
    }
    used = _simulate(windows, demand=2.0, percent_only=False, duration=FIVE_HOURS)
    # five of the day's 24 hours at the weekly window's allowed pace
    assert used["weekly"] == pytest.approx(0.85 + 0.1 * FIVE_HOURS / day, abs=0.002)
    assert used["5h"] < 0.3


# -- polling -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("https://api.z.ai/api/paas/v4", "https://api.z.ai/api/monitor/usage/quota/limit"),
        ("https://api.z.ai/api/anthropic", "https://api.z.ai/api/monitor/usage/quota/limit"),
        ("http://127.0.0.1:9/x", "http://127.0.0.1:9/api/monitor/usage/quota/limit"),
    ],
)
def test_the_quota_url_sits_on_the_api_origin(base: str, url: str) -> None:
    assert quota_url(base) == url


@pytest.mark.parametrize(
    "config",
    [
        {"url": "ftp://x/"},
        {"url": "http://x/", "interval_s": 0},
        {"url": "http://x/", "timeout_s": math.nan},
        {"url": "http://x/", "auth_scheme": "Bear er"},
    ],
)
def test_unusable_poller_config_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        QuotaPollerConfig(**config)


def test_a_base_without_scheme_and_host_has_no_quota_url() -> None:
    with pytest.raises(ValueError):
        quota_url("api.z.ai/api/paas/v4")


async def test_the_poller_follows_the_simulators_quota() -> None:
    samples: list[QuotaSample] = []
    with start_simulator("--quota-requests", "5h=100,weekly=1000") as sim:
        config = QuotaPollerConfig(quota_url(sim.url + "/api/paas/v4"), interval_s=0.05)
        poller = QuotaPoller(config, KEY, on_sample=samples.append)
        await poller.start()
        try:
            async with httpx.AsyncClient(base_url=sim.url) as client:
                for _ in range(3):
                    await client.post("/api/paas/v4/chat/completions", json={})
            status = poller.status()
            deadline = time.monotonic() + 5
            while not (status.windows and status.windows[0].used_ratio == 0.03):
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.02)
                status = poller.status()
        finally:
            await poller.stop()
    five, weekly = status.windows
    assert (five.name, weekly.name) == ("5h", "weekly")
    assert weekly.used_ratio == pytest.approx(0.003)
    assert five.reset_at == pytest.approx(time.time() + FIVE_HOURS, abs=30)
    assert weekly.length_s == WEEK
    assert status.error_kind is None and status.last_error is None
    assert status.sample_age_s is not None and status.sample_age_s < 1
    assert samples and samples[-1] is poller.latest


# What the scripted endpoint does for one poll: (status, body), or sleep that long first.
Answer = tuple[int, bytes] | float


@asynccontextmanager
async def _scripted_server(
    answers: list[Answer],
) -> AsyncIterator[tuple[str, list[str]]]:
    """A quota endpoint giving `answers` in turn (a float: sleep that long); the last repeats.
    Yields its URL and the Authorization headers it saw."""
    seen: list[str] = []

    async def quota(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            answer = (200, orjson.dumps(REAL_ANSWER))
        status, body = answer
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get(QUOTA_PATH, quota)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url(QUOTA_PATH)), seen
    finally:
        await server.close()


@pytest.mark.parametrize(("scheme", "header"), [("Bearer", f"Bearer {KEY}"), ("", KEY)])
async def test_the_key_is_sent_with_the_configured_scheme(scheme: str, header: str) -> None:
    async with _scripted_server([(200, orjson.dumps(REAL_ANSWER))]) as (url, seen):
        poller = QuotaPoller(QuotaPollerConfig(url, auth_scheme=scheme), KEY)
        try:
            assert await poller.poll_once() is not None
        finally:
            await poller.stop()
    assert seen == [header]


async def test_failures_keep_the_last_sample_and_are_logged_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock(NOW)
    good = (200, orjson.dumps(REAL_ANSWER))
    failed = (200, b'{"code": 1001, "msg": "no plan for ' + KEY.encode() + b'", "success": false}')
    answers: list[Answer] = [
        good, (500, b"oops"), (500, b"oops"), (503, b""), failed, failed, (200, b"{}"), good,
    ]  # fmt: skip
    caplog.set_level(logging.INFO, logger="zai_proxy.limiter.quota_poller")
    async with _scripted_server(answers) as (url, _):
        poller = QuotaPoller(QuotaPollerConfig(url), KEY, clock=clock)
        kinds = []
        try:
            for _ in range(8):
                await poller.poll_once()
                clock.now += 60
                kinds.append(poller.status().error_kind)
                if kinds[-1] is not None:
                    assert poller.latest is not None and poller.latest.at == NOW
        finally:
            await poller.stop()
    assert kinds == [None, "http", "http", "http", "api_error", "api_error", "no_windows", None]
    status = poller.status()
    assert (status.polls, status.failures) == (8, 6)
    assert status.sample_age_s == 60
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 5  # works, http, api_error, no_windows, recovered
    assert "HTTP 500" in messages[1] and "no plan for ***" in messages[2]
    assert all(KEY not in message for message in messages)


async def test_a_slow_endpoint_times_out() -> None:
    async with _scripted_server([1.0]) as (url, _):
        poller = QuotaPoller(QuotaPollerConfig(url, timeout_s=0.1), KEY)
        try:
            assert await poller.poll_once() is None
        finally:
            await poller.stop()
    assert poller.status().error_kind == "timeout"


async def test_an_unreachable_endpoint_is_a_network_failure() -> None:
    poller = QuotaPoller(QuotaPollerConfig("http://127.0.0.1:9" + QUOTA_PATH, timeout_s=2), KEY)
    try:
        assert await poller.poll_once() is None
    finally:
        await poller.stop()
    status = poller.status()
    assert status.error_kind == "network"
    assert status.windows == () and status.sample_age_s is None


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
