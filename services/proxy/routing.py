"""Maps a client's request target onto the upstream URL of its dialect.

OpenAI-style paths under ``/v1/...`` go to ``ZAI_TARGET_URL`` with the ``/v1`` dropped
(the base already holds its version segment); ``/v1/messages`` and
``/v1/messages/count_tokens`` go to the Anthropic base with the path kept; anything else
goes to the OpenAI base as it is. The upstream URL is always ``base + path``: a target
that does not start with a single ``/``, or that holds dot segments, encoded slashes or
control characters, is refused before anything is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from zai_proxy.proxy.errors import BadRequestTarget

Dialect = Literal["openai", "anthropic"]

ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})

# Route templates: the only values the `path` metric label takes.
TEMPLATES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/other",
        "/other",
    }
)

# Allowed raw path characters: RFC 3986 pchar and "/", percent escapes checked separately.
_SAFE_PATH = re.compile(rb"^/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$")
# Escapes that would smuggle a separator, a dot segment or a control character.
_FORBIDDEN_ESCAPE = re.compile(rb"%(2[fF]|5[cC]|2[eE]|0[0-9a-fA-F]|1[0-9a-fA-F]|7[fF])")
_BAD_ESCAPE = re.compile(rb"%(?![0-9a-fA-F]{2})")
_BAD_QUERY = re.compile(rb"[^\x21-\x7e]|#")


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes upstream and how it is labelled."""

    dialect: Dialect
    url: str
    template: str


def _template(path: str) -> str:
    if path in TEMPLATES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path.startswith("/v1/") or path == "/v1":
        return "/v1/other"
    return "/other"


class Router:
    """Resolves request targets against the two configured upstream bases."""

    def __init__(self, openai_base: str, anthropic_base: str) -> None:
        self._openai = openai_base.rstrip("/")
        self._anthropic = anthropic_base.rstrip("/")

    def resolve(self, raw_path: bytes, query_string: bytes) -> Route:
        """Return the route for a request target, or raise BadRequestTarget."""
        if not raw_path.startswith(b"/") or raw_path.startswith(b"//"):
            raise BadRequestTarget("request target must be a path starting with a single '/'")
        if not _SAFE_PATH.match(raw_path):
            raise BadRequestTarget("request path holds characters that are not allowed")
        if b"%" in raw_path and (
            _FORBIDDEN_ESCAPE.search(raw_path) or _BAD_ESCAPE.search(raw_path)
        ):
            raise BadRequestTarget("request path holds an encoded separator or control byte")
        path = raw_path.decode("ascii")
        if any(segment in (".", "..") for segment in path.split("/")):
            raise BadRequestTarget("request path must not hold '.' or '..' segments")
        if query_string and _BAD_QUERY.search(query_string):
            raise BadRequestTarget("query string holds characters that are not allowed")

        query = "?" + query_string.decode("ascii") if query_string else ""
        if path in ANTHROPIC_PATHS:
            return Route("anthropic", f"{self._anthropic}{path}{query}", path)
        upstream_path = path[3:] if path == "/v1" or path.startswith("/v1/") else path
        return Route("openai", f"{self._openai}{upstream_path}{query}", _template(path))
