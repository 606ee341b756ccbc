"""Errors the proxy itself answers with, and their HTTP form.

    ProxyError                  any answer the proxy makes instead of the upstream
    ├── MalformedRequest        400  not well-formed HTTP/1.1 (the parser refused it)
    ├── BadRequestTarget        400  the target could steer the request elsewhere
    ├── MethodNotAllowed        405  TRACE or CONNECT: never forwarded
    ├── RequestTimeout          408  the client stopped sending its request (CLIENT_*_TIMEOUT)
    ├── RequestTooLarge         413  the body is over MAX_REQUEST_BODY_BYTES
    ├── RequestHeadTooLarge     431  the target and headers are over MAX_REQUEST_HEADER_BYTES
    ├── Overloaded              503  no worker slot within QUEUE_TIMEOUT, or the queue is full
    ├── UpstreamUnavailable     502  the upstream could not be reached or broke off
    └── UpstreamTimeout         504  the upstream did not answer in time

Bodies take the error shape of the client's dialect so that SDKs show the message, and
carry ``"source": "proxy"`` (and an ``X-Proxy-Error`` header) so nobody mistakes them for
the upstream's answers.
"""

from __future__ import annotations

import math
from typing import Literal

import orjson

# Set in a request's ASGI scope by the connection layer (server.py) when it refuses the
# request's broken body itself: the application then hears that the client left, and
# counts this status instead of 499.
REFUSED_STATUS = "zai_proxy.refused_status"
REFUSED_CODE = "zai_proxy.refused_code"  # and that refusal's code, for the metrics


class ProxyError(Exception):
    """An answer made by the proxy rather than the upstream."""

    status = 500
    code = "proxy_error"
    anthropic_type = "api_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def body(self, dialect: Literal["openai", "anthropic"]) -> bytes:
        """The JSON body in the client's dialect."""
        if dialect == "anthropic":
            return orjson.dumps(
                {
                    "type": "error",
                    "error": {"type": self.anthropic_type, "message": self.message},
                    "source": "proxy",
                }
            )
        return orjson.dumps(
            {
                "error": {"message": self.message, "type": self.code, "code": self.code},
                "source": "proxy",
            }
        )

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Headers that go with the answer."""
        headers = [(b"content-type", b"application/json"), (b"x-proxy-error", self.code.encode())]
        if self.retry_after is not None:
            headers.append((b"retry-after", str(max(1, math.ceil(self.retry_after))).encode()))
        return headers


class MalformedRequest(ProxyError):
    """The HTTP parser refused the request's framing; the connection is closed."""

    status = 400
    code = "invalid_http_request"
    anthropic_type = "invalid_request_error"


class BadRequestTarget(ProxyError):
    """The request target is not a plain path on the configured upstream."""

    status = 400
    code = "invalid_request_target"
    anthropic_type = "invalid_request_error"


class MethodNotAllowed(ProxyError):
    """A method the proxy does not forward."""

    status = 405
    code = "method_not_allowed"
    anthropic_type = "invalid_request_error"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), (b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")]


class RequestTimeout(ProxyError):
    """The client went silent before its whole request arrived; the connection is closed."""

    status = 408
    code = "request_timeout"
    anthropic_type = "invalid_request_error"

    def headers(self) -> list[tuple[bytes, bytes]]:
        # The rest of the request may still come: the connection cannot serve another.
        return [*super().headers(), (b"connection", b"close")]


class RequestTooLarge(ProxyError):
    """The request body is larger than the configured limit."""

    status = 413
    code = "request_too_large"
    anthropic_type = "request_too_large"


class RequestHeadTooLarge(ProxyError):
    """The request target and headers together are larger than the configured limit."""

    status = 431
    code = "request_header_too_large"
    anthropic_type = "invalid_request_error"


class Overloaded(ProxyError):
    """Every worker slot stayed busy for the whole queue timeout."""

    status = 503
    code = "proxy_overloaded"
    anthropic_type = "overloaded_error"


class UpstreamUnavailable(ProxyError):
    """The upstream refused the connection, reset it or answered nothing usable."""

    status = 502
    code = "upstream_unavailable"


class UpstreamTimeout(ProxyError):
    """The upstream did not answer within the configured timeouts."""

    status = 504
    code = "upstream_timeout"
