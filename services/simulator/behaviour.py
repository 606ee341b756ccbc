"""The x-sim-* request headers that script one answer of the simulated upstream."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

ErrorShape = Literal["openai", "flat", "anthropic"]
ERROR_SHAPES: tuple[ErrorShape, ...] = ("openai", "flat", "anthropic")

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog while the patient cat watches."
DEFAULT_CHUNKS = 5
HEADER_PREFIX = b"x-sim-"


class BehaviourError(ValueError):
    """An x-sim-* header is unknown or has a value that cannot be used."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts one answer reports."""

    prompt: int
    completion: int
    cached: int = 0
    reasoning: int = 0
    cache_creation: int = 0


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How to answer one request; the defaults give a normal, quick, well-formed answer."""

    latency_ms: float = 0.0
    chunks: int = DEFAULT_CHUNKS
    chunk_gap_ms: float = 0.0
    text: str = DEFAULT_TEXT
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_creation_tokens: int = 0
    usage: bool = True
    split: int | None = None
    coalesce: bool = False
    crlf: bool = False
    multiline: bool = False
    comments: bool = False
    break_after: int | None = None
    stream_bytes: int | None = None
    status: int | None = None
    body: bytes | None = None
    zai_code: int | None = None
    error_shape: ErrorShape = "openai"
    retry_after: str | None = None
    fail_first: int | None = None
    key: str | None = None
    empty: bool = False
    tool_calls: int = 1

    @property
    def scripts_error(self) -> bool:
        """Whether x-sim-status or x-sim-zai-code asks for an error answer."""
        return self.status is not None or self.zai_code is not None

    @property
    def plain_stream(self) -> bool:
        """Whether a stream is written event by event with no shaping at all."""
        return (
            not (self.split or self.coalesce or self.comments or self.chunk_gap_ms)
            and self.break_after is None
        )

    @property
    def sleeps(self) -> bool:
        """Whether answering takes long enough that a client disconnect should cancel it."""
        return bool(self.latency_ms or self.chunk_gap_ms or self.split or self.stream_bytes)

    def usage_for(self, body_size: int, completion_words: int) -> Usage | None:
        """The usage to report for a request body of `body_size` bytes, or None for none."""
        if not self.usage:
            return None
        return Usage(
            prompt=body_size // 4 if self.prompt_tokens is None else self.prompt_tokens,
            completion=(
                completion_words if self.completion_tokens is None else self.completion_tokens
            ),
            cached=self.cached_tokens,
            reasoning=self.reasoning_tokens,
            cache_creation=self.cache_creation_tokens,
        )


DEFAULT_BEHAVIOUR = Behaviour()


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be >= 1")
    return number


def _millis(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 600_000:
        raise ValueError("must be between 0 and 600000")
    return number


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0")


def _usage(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered == "none":
        return False
    if lowered == "report":
        return True
    raise ValueError("must be none or report")


def _status(value: str) -> int:
    number = int(value)
    if not 200 <= number <= 599:
        raise ValueError("must be an HTTP status between 200 and 599")
    return number


def _shape(value: str) -> ErrorShape:
    for shape in ERROR_SHAPES:
        if value == shape:
            return shape
    raise ValueError(f"must be one of {', '.join(ERROR_SHAPES)}")


def _text(value: str) -> str:
    return value


def _body(value: str) -> bytes:
    return value.encode()


# header name -> (Behaviour field, parser of the decoded header value)
_FIELDS: dict[bytes, tuple[str, Callable[[str], Any]]] = {
    b"x-sim-latency-ms": ("latency_ms", _millis),
    b"x-sim-chunks": ("chunks", _positive),
    b"x-sim-chunk-gap-ms": ("chunk_gap_ms", _millis),
    b"x-sim-text": ("text", _text),
    b"x-sim-prompt-tokens": ("prompt_tokens", _count),
    b"x-sim-completion-tokens": ("completion_tokens", _count),
    b"x-sim-cached-tokens": ("cached_tokens", _count),
    b"x-sim-reasoning-tokens": ("reasoning_tokens", _count),
    b"x-sim-cache-creation-tokens": ("cache_creation_tokens", _count),
    b"x-sim-usage": ("usage", _usage),
    b"x-sim-split": ("split", _positive),
    b"x-sim-coalesce": ("coalesce", _flag),
    b"x-sim-crlf": ("crlf", _flag),
    b"x-sim-multiline": ("multiline", _flag),
    b"x-sim-comments": ("comments", _flag),
    b"x-sim-break-after": ("break_after", _count),
    b"x-sim-stream-bytes": ("stream_bytes", _positive),
    b"x-sim-status": ("status", _status),
    b"x-sim-body": ("body", _body),
    b"x-sim-zai-code": ("zai_code", _positive),
    b"x-sim-error-shape": ("error_shape", _shape),
    b"x-sim-retry-after": ("retry_after", _text),
    b"x-sim-fail-first": ("fail_first", _count),
    b"x-sim-key": ("key", _text),
    b"x-sim-empty": ("empty", _flag),
    b"x-sim-tool-calls": ("tool_calls", _positive),
}


def _decode(raw: bytes) -> str:
    # Header values are bytes on the wire; clients that send UTF-8 text get it back intact.
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_behaviour(headers: Iterable[tuple[bytes, bytes]]) -> Behaviour:
    """Build a Behaviour from (lower-case name, value) x-sim-* header pairs; last one wins."""
    changes: dict[str, Any] = {}
    for name, raw in headers:
        try:
            field, parse = _FIELDS[name]
        except KeyError:
            raise BehaviourError(f"unknown simulator header {name.decode('latin-1')}") from None
        try:
            changes[field] = parse(_decode(raw))
        except ValueError as exc:
            raise BehaviourError(
                f"bad value {_decode(raw)!r} for {name.decode('latin-1')}: {exc}"
            ) from None
    behaviour = replace(DEFAULT_BEHAVIOUR, **changes)
    if behaviour.fail_first is not None and behaviour.key is None:
        raise BehaviourError("x-sim-fail-first needs x-sim-key to count requests by")
    if behaviour.coalesce and behaviour.stream_bytes is not None:
        raise BehaviourError("x-sim-coalesce cannot hold an x-sim-stream-bytes stream in memory")
    return behaviour
