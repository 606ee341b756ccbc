"""Error bodies as Z.ai sends them: a numeric code in one of three JSON shapes."""

import time
from typing import Any

import orjson

from .behaviour import ErrorShape

# Z.ai writes reset times on its own wall clock, China Standard Time (UTC+8).
_ZAI_UTC_OFFSET_S = 8 * 3600
_RESET_DELAY_S = {1308: 5 * 3600, 1310: 7 * 24 * 3600}

_MESSAGES = {
    1302: "High concurrency usage of this API, please reduce concurrency or contact customer "
    "service to increase limits",
    1303: "High frequency usage of this API, please reduce frequency or contact customer "
    "service to increase limits",
    1305: "The service may be temporarily overloaded, please try again later",
    1312: "The model is currently experiencing high traffic, please try again later",
    1113: "Insufficient balance or no resource package. Please recharge.",
    1309: "Your plan has expired; renew it to continue",
    1311: "The model requested is not included in your plan",
}


def zai_message(code: int, now: float | None = None, reset_at: float | None = None) -> str:
    """The message Z.ai sends with `code`; quota codes name the wall-clock reset time
    (`reset_at`, epoch seconds, or a full window from `now`)."""
    if code in _RESET_DELAY_S:
        reset = reset_at
        if reset is None:
            reset = (time.time() if now is None else now) + _RESET_DELAY_S[code]
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(reset + _ZAI_UTC_OFFSET_S))
        window = "5 hour" if code == 1308 else "weekly"
        return f"Usage limit reached for {window} window. Your limit will reset at {at}"
    return _MESSAGES.get(code, "Rate limit reached for requests")


def zai_error(code: int, shape: ErrorShape, reset_at: float | None = None) -> bytes:
    """A Z.ai error body for `code` in the given JSON shape."""
    message = zai_message(code, reset_at=reset_at)
    body: dict[str, Any]
    if shape == "flat":
        body = {"code": code, "msg": message, "success": False}
    elif shape == "anthropic":
        body = {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": message, "code": str(code)},
        }
    else:
        body = {"error": {"code": str(code), "message": message}}
    return orjson.dumps(body)


def status_error(status: int) -> bytes:
    """A generic OpenAI-style error body for a scripted status without x-sim-body."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return orjson.dumps(
        {"error": {"message": f"simulated status {status}", "type": kind, "code": str(status)}}
    )


def bad_request(message: str) -> bytes:
    """An OpenAI-style 400 body, for requests the simulator cannot act on."""
    return orjson.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "code": "400"}}
    )


def not_found(message: str) -> bytes:
    """An OpenAI-style 404 body, for a resource the simulator does not have."""
    return orjson.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "code": "404"}}
    )


# The hidden limit's answers never change, so they are built once.
HIDDEN_LIMIT_BODIES = {code: zai_error(code, "openai") for code in (1302, 1305)}
