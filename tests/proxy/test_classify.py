"""Upstream answers to outcome classes, error codes, and retry hints: every shape, any bytes."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zai_proxy.proxy.classify import (
    MAX_RETRY_AFTER_SECONDS,
    body_retry_hint,
    classify_status,
    error_code,
    retry_after_seconds,
)
from zai_proxy.shared.outcomes import Outcome

# 2026-11-27 10:00:00 UTC, which is 18:00:00 in Beijing (UTC+8).
NOW = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC).timestamp()


def openai_shape(code: str | float, message: str = "refused") -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def flat_shape(code: str | float, message: str = "refused") -> bytes:
    return orjson.dumps({"code": code, "msg": message, "success": False})


def anthropic_shape(code: str | float | None, error_type: str = "rate_limit_error") -> bytes:
    error: dict[str, object] = {"type": error_type, "message": "refused"}
    if code is not None:
        error["code"] = code
    return orjson.dumps({"type": "error", "error": error})


SHAPES = [openai_shape, flat_shape, anthropic_shape]

ZAI_429S = [
    (1302, Outcome.RATE_CONCURRENCY),
    (1303, Outcome.RATE_FREQUENCY),
    (1305, Outcome.RATE_FREQUENCY),
    (1308, Outcome.RATE_QUOTA),
    (1310, Outcome.RATE_QUOTA),
    (1312, Outcome.RATE_CONGESTION),
    (1399, Outcome.RATE_FREQUENCY),  # unknown codes count as frequency
]


# --- classify_status -------------------------------------------------------------------------


@pytest.mark.parametrize("as_text", [True, False], ids=["string-code", "numeric-code"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.__name__)
@pytest.mark.parametrize(("code", "outcome"), ZAI_429S)
def test_a_zai_429_is_classed_by_its_code_in_every_shape(
    code: int, outcome: Outcome, shape, as_text: bool
) -> None:
    body = shape(str(code) if as_text else code)
    assert classify_status(429, body) is outcome


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b"", Outcome.OK),
        (201, b"{}", Outcome.OK),
        (204, b"", Outcome.OK),
        (304, b"", Outcome.OK),
        (200, openai_shape(1302), Outcome.OK),  # a code in a success body is not an error
        (429, b"", Outcome.RATE_FREQUENCY),
        (429, b"Too Many Requests", Outcome.RATE_FREQUENCY),
        (429, b'{"error": "slow down"}', Outcome.RATE_FREQUENCY),
        (429, anthropic_shape(None, "rate_limit_error"), Outcome.RATE_FREQUENCY),
        (429, anthropic_shape(None, "overloaded_error"), Outcome.RATE_CONGESTION),
        (429, anthropic_shape("1302", "rate_limit_error"), Outcome.RATE_CONCURRENCY),
        (429, openai_shape(" 1308 "), Outcome.RATE_QUOTA),
        (429, openai_shape(1310.0), Outcome.RATE_QUOTA),
        (529, anthropic_shape(None, "overloaded_error"), Outcome.RATE_CONGESTION),
        (529, b"", Outcome.RATE_CONGESTION),
        (503, anthropic_shape(None, "overloaded_error"), Outcome.RATE_CONGESTION),
        (500, openai_shape("1312"), Outcome.RATE_CONGESTION),
        (500, openai_shape("500", "Internal Error"), Outcome.SERVER_ERROR),
        (502, b"<html>Bad Gateway</html>", Outcome.SERVER_ERROR),
        (503, b"", Outcome.SERVER_ERROR),
        (504, anthropic_shape(None, "api_error"), Outcome.SERVER_ERROR),
        (400, openai_shape(1210), Outcome.CLIENT_ERROR),
        (401, openai_shape(1002), Outcome.CLIENT_ERROR),
        (403, b"", Outcome.CLIENT_ERROR),
        (404, b"not found", Outcome.CLIENT_ERROR),
        (413, b"", Outcome.CLIENT_ERROR),
        (400, openai_shape(1302), Outcome.CLIENT_ERROR),  # only a 429 status is a rate limit
        (0, b"", Outcome.SERVER_ERROR),  # nonsense statuses mean a broken upstream
        (101, b"", Outcome.SERVER_ERROR),
        (600, b"", Outcome.SERVER_ERROR),
    ],
)
def test_statuses_and_bodies_map_to_outcomes(status: int, body: bytes, outcome: Outcome) -> None:
    assert classify_status(status, body) is outcome


# --- error_code ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.__name__)
@pytest.mark.parametrize("code", ["1302", 1302, " 1302", 1302.0])
def test_error_code_reads_every_shape_as_a_string(shape, code: str | int | float) -> None:
    assert error_code(shape(code)) == "1302"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"error": {"code": "1308"}, "code": 200}', "1308"),  # the error object wins
        (b'{"error": {"message": "x"}, "code": 1305}', "1305"),
        (b'{"type": "error", "error": {"type": "rate_limit_error", "message": "x"}}', None),
        (b'{"code": "rate_limit_exceeded"}', "rate_limit_exceeded"),
        (b'{"code": true}', None),
        (b'{"code": null}', None),
        (b'{"code": ""}', None),
        (b'{"code": {"value": 1302}}', None),
        (b'{"code": [1302]}', None),
        (b'{"error": "1302"}', None),
        (b"[1302]", None),
        (b'"1302"', None),
        (b"1302", None),
        (b"", None),
        (b"null", None),
        (b'{"error": {"code": "13', None),  # truncated
        (b"\xff\xfe{\x00", None),  # not UTF-8
        (b"<html><body>429 Too Many Requests</body></html>", None),
        (b"[" * 5_000 + b"]" * 5_000, None),  # deeper than the parser allows
        (b'{"code": "1302", "pad": "' + b"x" * 70_000 + b'"}', None),  # too big to parse
    ],
)
def test_error_code_is_none_when_there_is_no_usable_code(body: bytes, code: str | None) -> None:
    assert error_code(body) == code


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # orjson encodes 64-bit integers only
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["error", "code", "type", "msg", "x"]), children)
    ),
    max_leaves=12,
)


@given(st.binary(max_size=512))
def test_classification_never_raises_on_any_bytes(body: bytes) -> None:
    for status in (200, 400, 429, 500, 529):
        assert classify_status(status, body) in Outcome
    code = error_code(body)
    assert code is None or isinstance(code, str)
    hint = body_retry_hint(body, NOW)
    assert hint is None or 0.0 <= hint <= MAX_RETRY_AFTER_SECONDS


@given(json_values)
def test_classification_never_raises_on_any_json(value: object) -> None:
    body = orjson.dumps(value)
    assert classify_status(429, body) in Outcome
    code = error_code(body)
    assert code is None or (isinstance(code, str) and code == code.strip() and code)


# --- retry_after_seconds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("Fri, 27 Nov 2026 10:00:30 GMT", 30.0),
        ("Friday, 27-Nov-26 10:00:30 GMT", 30.0),  # RFC 850
        ("Fri Nov 27 10:00:30 2026", 30.0),  # asctime
        ("Fri, 27 Nov 2026 11:00:30 +0100", 30.0),
        ("Fri, 27 Nov 2026 09:59:00 GMT", 0.0),  # already past: retry now
        ("99999999999", MAX_RETRY_AFTER_SECONDS),  # absurd waits are capped
        ("9" * 400, MAX_RETRY_AFTER_SECONDS),
        ("Fri, 01 Jan 2100 00:00:00 GMT", MAX_RETRY_AFTER_SECONDS),
        (None, None),
        ("", None),
        ("-1", None),
        ("soon", None),
        ("1e3", None),
        ("inf", None),
        ("NaN", None),
        ("3 seconds", None),
        ("١٢", None),  # Arabic-Indic digits are not delta-seconds
        ("Mon, 99 Oct 2015 07:28:00 GMT", None),
        ("Wed, 21 Oct 99999 07:28:00 GMT", None),
        ("Mon, 01 Jan 0001 00:00:00 +0100", 0.0),  # extreme dates neither raise nor wrap
        ("Fri, 31 Dec 9999 23:59:59 -2359", MAX_RETRY_AFTER_SECONDS),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, NOW) == (None if seconds is None else pytest.approx(seconds))


@given(st.text(max_size=64))
def test_retry_after_never_raises_and_stays_in_range(value: str) -> None:
    seconds = retry_after_seconds(value, NOW)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER_SECONDS


# --- body_retry_hint -------------------------------------------------------------------------


def at_ms(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int:
    return round(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("body", "seconds"),
    [
        # Z.ai quota messages name a Beijing wall-clock time (UTC+8): 19:00 there is 11:00 UTC.
        (
            openai_shape(
                "1308",
                "Usage limit reached for 5 hour. Your limit will reset at 2026-11-27 19:00:00",
            ),
            3600.0,
        ),
        (
            flat_shape(
                1310, "Weekly/Monthly Limit Exhausted. Your limit will reset at 2026-11-30 18:00:00"
            ),
            3 * 86400.0,
        ),
        (openai_shape("1308", "Your limit will reset at 2026-11-27 17:00:00"), 0.0),  # past
        (openai_shape("1308", "Your limit will reset at 2026-11-27T10:00:30Z"), 30.0),
        (openai_shape("1308", "limit resets at 2026-11-27 11:00:30+01:00"), 30.0),
        (
            openai_shape("1310", "Your limit will reset at 2027-06-01 00:00:00"),
            MAX_RETRY_AFTER_SECONDS,
        ),
        (openai_shape("1303", "Please retry after 3s"), 3.0),
        (openai_shape("1303", "please retry in 2 seconds"), 2.0),
        (anthropic_shape(None), None),
        (
            b'{"type":"error","error":{"type":"rate_limit_error","message":"Try again in 20s."}}',
            20.0,
        ),
        (b"rate limited, try again in 1.5 seconds", 1.5),
        (b"retry after 500ms", 0.5),
        (b"retry in 2 minutes", 120.0),
        (b"Retry After 1 hour", 3600.0),
        (b"retry after 7", 7.0),
        (b'{"error": {"retry_after": 12}}', 12.0),
        (b'{"retry_after": "4"}', 4.0),
        (b'{"retryAfter": 2.5, "message": "retry after 60s"}', 2.5),  # fields win over prose
        (b'{"retry_after": -3}', None),
        (b'{"retry_after": 1e12}', MAX_RETRY_AFTER_SECONDS),
        (orjson.dumps({"nextResetTime": at_ms(2026, 11, 27, 10, 5, 0)}), 300.0),  # epoch ms
        (orjson.dumps({"resetTime": at_ms(2026, 11, 27, 10, 5, 0) // 1000}), 300.0),  # epoch s
        (
            orjson.dumps(
                {
                    "data": {
                        "limits": [
                            {"type": "TOKENS", "nextResetTime": at_ms(2026, 11, 27, 10, 0, 10)}
                        ]
                    }
                }
            ),
            10.0,
        ),
        (b'{"error": {"resets_at": "2026-11-27T10:00:10Z"}}', 10.0),
        (b'{"error": {"resets_at": "tomorrow"}}', None),
        (b"\xff\xfe retry after 9s \xff", 9.0),  # not UTF-8, still readable prose
        (b"", None),
        (b"{}", None),
        (b"garbage", None),
        (openai_shape("1303", "rate limited"), None),
        (openai_shape("1308", "Usage limit reached for 5 hour"), None),  # a window, not a wait
        (b"retry after 2026-11-27", None),  # a date is not a number of seconds
    ],
)
def test_body_retry_hints_come_from_fields_then_prose(body: bytes, seconds: float | None) -> None:
    assert body_retry_hint(body, NOW) == (None if seconds is None else pytest.approx(seconds))


@given(st.text(max_size=200))
def test_body_retry_hint_never_raises_on_any_message(message: str) -> None:
    hint = body_retry_hint(openai_shape("1308", message), NOW)
    assert hint is None or 0.0 <= hint <= MAX_RETRY_AFTER_SECONDS
