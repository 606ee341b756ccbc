"""Token usage and output text of one exchange, read from OpenAI- and Anthropic-dialect JSON.

Conventions (one `Usage` shape for both dialects):

- ``input`` is every input token the model read, cached or not; ``cache_read`` and
  ``cache_write`` are subsets of it. ``reasoning`` is a subset of ``output``.
- OpenAI: ``usage.prompt_tokens`` -> input (it already includes cached tokens),
  ``prompt_tokens_details.cached_tokens`` -> cache_read (DeepSeek's
  ``prompt_cache_hit_tokens`` when that is absent), ``completion_tokens`` -> output,
  ``completion_tokens_details.reasoning_tokens`` -> reasoning. The Responses API spelling
  (``input_tokens``, ``output_tokens`` and their ``*_details``) is read the same way.
- Anthropic: input = ``input_tokens + cache_creation_input_tokens +
  cache_read_input_tokens``; cache_write = ``cache_creation_input_tokens``; cache_read =
  ``cache_read_input_tokens``; output = ``output_tokens``. Anthropic reports no reasoning
  count, so reasoning stays 0.
- A count is a non-negative ``int`` below 10**9; anything else (missing, null, bool, float,
  string, negative, absurd) counts 0. A subset is clamped to its whole. Nothing here raises
  on any JSON value shape.

Output text (for estimating output tokens when the upstream reports no usage) is every
piece the model generated: message text, reasoning, tool call names and arguments, one
part after another with a newline between parts, streamed or not (so a streamed answer is
estimated as its non-streamed form is). A stream accountant keeps at most
``max_text_chars`` of it and counts the rest in ``overflow_chars``, so memory stays
bounded on an endless stream and the estimator can extrapolate.

Input given as token ids (an embeddings ``input`` or a completions ``prompt`` of token
arrays) is counted exactly by ``request_token_ids``: a text estimate cannot read it.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

import orjson

__all__ = [
    "DEFAULT_MAX_TEXT_CHARS",
    "MAX_JSON_STRUCTURE",
    "AnthropicStreamAccount",
    "OpenAIStreamAccount",
    "RequestInfo",
    "Usage",
    "anthropic_output_text",
    "anthropic_usage",
    "openai_output_text",
    "openai_usage",
    "request_fields",
    "request_text",
    "request_token_ids",
    "tail_usage",
]

DEFAULT_MAX_TEXT_CHARS = 262_144
_MAX_COUNT = 10**9
# Parsing a request body blocks the event loop for 100-200 ns per JSON value: a 32 MB body
# of tiny values (`[[],[],...]`) holds ten million of them. A body with more structural
# characters (`,` `[` `{`, which bound the number of values) than this is not parsed, so no
# body blocks the loop for more than ~0.1 s (tests/reliability/test_hostile_input.py).
# Real requests stay far below it: a 30 MB conversation of 110,000 messages has 330,000.
MAX_JSON_STRUCTURE = 1 << 20

Dialect = Literal["openai", "anthropic"]


@dataclass(slots=True)
class Usage:
    """Token counts of one exchange."""

    input: int = 0  # every input token the model read, cached or not
    output: int = 0
    cache_read: int = 0  # subset of input
    cache_write: int = 0  # subset of input
    reasoning: int = 0  # subset of output


@dataclass(slots=True, frozen=True)
class RequestInfo:
    """The request body fields the proxy routes and accounts by, parsed once."""

    model: str | None
    stream: bool
    include_usage: bool
    parsed: dict[str, Any] | None  # None: not kept (a large body)


# Shared stand-ins for a missing object or array; only ever read.
_EMPTY: dict[str, Any] = {}
_NONE: list[Any] = []


def _valid(value: object) -> TypeGuard[int]:
    # `type(...) is int` rather than isinstance: JSON true must not count as 1 token.
    return type(value) is int and 0 <= value < _MAX_COUNT


def _count(value: object) -> int:
    return value if _valid(value) else 0


def _dict(value: object) -> dict[str, Any]:
    return value if type(value) is dict else _EMPTY


def _list(value: object) -> list[Any]:
    return value if type(value) is list else _NONE


def _has_count(usage: dict[str, Any], *keys: str) -> bool:
    return any(_valid(usage.get(key)) for key in keys)


def _openai_counts(usage: dict[str, Any]) -> Usage | None:
    if _has_count(usage, "prompt_tokens", "completion_tokens"):
        prompt = _count(usage.get("prompt_tokens"))
        cached = _count(_dict(usage.get("prompt_tokens_details")).get("cached_tokens"))
        if not cached:
            cached = _count(usage.get("prompt_cache_hit_tokens"))
        completion = _count(usage.get("completion_tokens"))
        reasoning = _count(_dict(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    elif _has_count(usage, "input_tokens", "output_tokens"):
        prompt = _count(usage.get("input_tokens"))
        cached = _count(_dict(usage.get("input_tokens_details")).get("cached_tokens"))
        completion = _count(usage.get("output_tokens"))
        reasoning = _count(_dict(usage.get("output_tokens_details")).get("reasoning_tokens"))
    else:
        return None
    return Usage(
        input=prompt,
        output=completion,
        cache_read=min(cached, prompt),
        reasoning=min(reasoning, completion),
    )


def openai_usage(obj: object) -> Usage | None:
    """Usage from an OpenAI-dialect response body or stream chunk, or None when it has none."""
    usage = _dict(obj).get("usage")
    if type(usage) is not dict:
        return None
    return _openai_counts(usage)


def anthropic_usage(obj: object) -> Usage | None:
    """Usage from an Anthropic message body (or a `message_start` message), or None."""
    usage = _dict(obj).get("usage")
    if type(usage) is not dict or not _has_count(usage, "input_tokens", "output_tokens"):
        return None
    fresh = _count(usage.get("input_tokens"))
    written = _count(usage.get("cache_creation_input_tokens"))
    read = _count(usage.get("cache_read_input_tokens"))
    return Usage(
        input=fresh + written + read,
        output=_count(usage.get("output_tokens")),
        cache_read=read,
        cache_write=written,
    )


# Which part of an answer a streamed piece belongs to; a new part starts on a new line, as
# the non-streamed text joins its parts. Tool call (or content block) i has two parts.
_CONTENT = 0
_REASONING = 1
_FUNCTION_CALL = 2
_FIRST_TOOL_PART = 3


def _index(value: object) -> int:
    return value if type(value) is int and value >= 0 else 0


class _TextAccount:
    """Bounded collection of streamed output text, shared by both dialects."""

    __slots__ = ("_kept", "_max", "_part", "_parts", "overflow_chars")

    def __init__(self, max_text_chars: int) -> None:
        if max_text_chars < 0:
            raise ValueError(f"max_text_chars must be >= 0, got {max_text_chars}")
        self._max = max_text_chars
        self._parts: list[str] = []
        self._kept = 0
        self._part = _CONTENT
        self.overflow_chars = 0

    def _add(self, text: object, part: int = _CONTENT) -> None:
        if type(text) is not str or not text:
            return
        if part != self._part:
            self._part = part
            if self._kept or self.overflow_chars:
                text = "\n" + text
        room = self._max - self._kept
        size = len(text)
        if size <= room:
            self._parts.append(text)
            self._kept += size
            return
        if room > 0:
            self._parts.append(text[:room])
            self._kept = self._max
        self.overflow_chars += size - max(room, 0)

    def output_text(self) -> str:
        """The output text collected so far (at most `max_text_chars` of it)."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""


class OpenAIStreamAccount(_TextAccount):
    """Collects usage and output text from OpenAI chat/completions stream chunks."""

    __slots__ = ("usage",)

    def __init__(self, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> None:
        super().__init__(max_text_chars)
        self.usage: Usage | None = None

    def feed(self, chunk: object) -> None:
        """Account one parsed `data:` JSON payload."""
        if type(chunk) is not dict:
            return
        usage = chunk.get("usage")
        if type(usage) is dict:
            seen = _openai_counts(usage)
            if seen is not None:
                self.usage = seen if self.usage is None else _field_max(self.usage, seen)
        for choice in _list(chunk.get("choices")):
            if type(choice) is not dict:
                continue
            delta = choice.get("delta")
            if type(delta) is dict:
                self._add(delta.get("reasoning_content"), _REASONING)
                self._add(delta.get("reasoning"), _REASONING)
                self._add(delta.get("content"))
                for call in _list(delta.get("tool_calls")):
                    call = _dict(call)
                    function = _dict(call.get("function"))
                    part = _FIRST_TOOL_PART + 2 * _index(call.get("index"))
                    self._add(function.get("name"), part)
                    self._add(function.get("arguments"), part + 1)
                self._add(_dict(delta.get("function_call")).get("arguments"), _FUNCTION_CALL)
            else:
                self._add(choice.get("text"))


class AnthropicStreamAccount(_TextAccount):
    """Collects usage and output text from Anthropic message stream events."""

    __slots__ = ("_fresh", "_output", "_read", "_seen", "_written")

    def __init__(self, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> None:
        super().__init__(max_text_chars)
        self._seen = False
        self._fresh = 0
        self._written = 0
        self._read = 0
        self._output = 0

    @property
    def usage(self) -> Usage | None:
        """Usage seen so far, or None before any event carried it."""
        if not self._seen:
            return None
        return Usage(
            input=self._fresh + self._written + self._read,
            output=self._output,
            cache_read=self._read,
            cache_write=self._written,
        )

    def feed(self, event: object) -> None:
        """Account the parsed data of one stream event."""
        if type(event) is not dict:
            return
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = _dict(event.get("delta"))
            # A block's name (tool_use) is its first part, its text (or input) the second.
            part = 2 * _index(event.get("index")) + 1
            self._add(delta.get("text"), part)
            self._add(delta.get("thinking"), part)
            self._add(delta.get("partial_json"), part)
        elif kind == "message_start":
            usage = _dict(_dict(event.get("message")).get("usage"))
            self._take_input(usage)
            if _has_count(usage, "output_tokens"):
                self._seen = True
                self._output = max(self._output, _count(usage.get("output_tokens")))
        elif kind == "message_delta":
            usage = _dict(event.get("usage"))
            self._take_input(usage)
            # Cumulative: the last message_delta is the final count, replacing the
            # placeholder that message_start carries.
            if _has_count(usage, "output_tokens"):
                self._seen = True
                self._output = _count(usage.get("output_tokens"))
        elif kind == "content_block_start":
            block = _dict(event.get("content_block"))
            part = 2 * _index(event.get("index"))
            self._add(block.get("name"), part)
            self._add(block.get("text"), part + 1)
            self._add(block.get("thinking"), part + 1)

    def _take_input(self, usage: dict[str, Any]) -> None:
        if not _has_count(
            usage, "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"
        ):
            return
        self._seen = True
        self._fresh = max(self._fresh, _count(usage.get("input_tokens")))
        self._written = max(self._written, _count(usage.get("cache_creation_input_tokens")))
        self._read = max(self._read, _count(usage.get("cache_read_input_tokens")))


_USAGE_KEY = b'"usage"'
_QUOTE, _BACKSLASH, _OPEN, _CLOSE = 0x22, 0x5C, 0x7B, 0x7D


def _object_from(data: bytes | bytearray, start: int) -> bytes | None:
    """The JSON object whose `{` is at `start`, found by its balanced braces, or None when
    it does not end within `data`."""
    depth = 0
    in_string = escaped = False
    for end in range(start, len(data)):
        byte = data[end]
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte == _OPEN:
            depth += 1
        elif byte == _CLOSE:
            depth -= 1
            if depth == 0:
                return bytes(data[start : end + 1])
    return None


def tail_usage(dialect: Dialect, tail: bytes | bytearray) -> Usage | None:
    """Usage from the last bytes of a JSON answer too large to parse whole (a long
    embeddings list): both dialects write `usage` after the output. The last `"usage"` key
    is the answer's own: inside a string the quotes around the word would be escaped."""
    at = tail.rfind(_USAGE_KEY)
    if at < 0:
        return None
    start = tail.find(b"{", at + len(_USAGE_KEY))
    if start < 0 or tail[at + len(_USAGE_KEY) : start].strip() != b":":
        return None
    found = _object_from(tail, start)
    if found is None:
        return None
    try:
        usage = orjson.loads(found)
    except orjson.JSONDecodeError:
        return None
    body = {"usage": usage}
    return anthropic_usage(body) if dialect == "anthropic" else openai_usage(body)


def _field_max(a: Usage, b: Usage) -> Usage:
    return Usage(
        input=max(a.input, b.input),
        output=max(a.output, b.output),
        cache_read=max(a.cache_read, b.cache_read),
        cache_write=max(a.cache_write, b.cache_write),
        reasoning=max(a.reasoning, b.reasoning),
    )


def _json(value: object) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return ""


def _add_str(value: object, out: list[str]) -> None:
    if type(value) is str and value:
        out.append(value)


def _openai_parts(content: object, out: list[str]) -> None:
    if type(content) is str:
        out.append(content)
        return
    for part in _list(content):
        if type(part) is str:
            out.append(part)
        elif type(part) is dict:
            _add_str(part.get("text"), out)
            _add_str(part.get("refusal"), out)


def _openai_message(message: dict[str, Any], out: list[str]) -> None:
    _add_str(message.get("reasoning_content"), out)
    _add_str(message.get("reasoning"), out)
    _openai_parts(message.get("content"), out)
    _add_str(message.get("refusal"), out)
    _add_str(message.get("name"), out)
    for call in _list(message.get("tool_calls")):
        function = _dict(_dict(call).get("function"))
        _add_str(function.get("name"), out)
        _add_str(function.get("arguments"), out)
    _add_str(_dict(message.get("function_call")).get("arguments"), out)


def _anthropic_blocks(content: object, out: list[str], *, nested: bool = False) -> None:
    if type(content) is str:
        out.append(content)
        return
    for block in _list(content):
        block = _dict(block)
        kind = block.get("type")
        if kind == "text":
            _add_str(block.get("text"), out)
        elif kind == "thinking":
            _add_str(block.get("thinking"), out)
        elif kind in ("tool_use", "server_tool_use"):
            _add_str(block.get("name"), out)
            out.append(_json(block.get("input", _EMPTY)))
        elif kind == "tool_result" and not nested:
            _anthropic_blocks(block.get("content"), out, nested=True)
        elif kind == "document":
            source = _dict(block.get("source"))
            if source.get("type") == "text":
                _add_str(source.get("data"), out)


def _joined(parts: list[str]) -> str:
    return "\n".join(part for part in parts if part)


def openai_output_text(obj: object) -> str:
    """The generated text of a non-streamed OpenAI-dialect response body."""
    out: list[str] = []
    for choice in _list(_dict(obj).get("choices")):
        choice = _dict(choice)
        message = choice.get("message")
        if type(message) is dict:
            _openai_message(message, out)
        else:
            _add_str(choice.get("text"), out)
    return _joined(out)


def anthropic_output_text(obj: object) -> str:
    """The generated text of a non-streamed Anthropic message body."""
    out: list[str] = []
    _anthropic_blocks(_list(_dict(obj).get("content")), out, nested=True)
    return _joined(out)


def _openai_request(body: dict[str, Any], out: list[str]) -> int:
    messages = 0
    for message in _list(body.get("messages")):
        if type(message) is dict:
            messages += 1
            _openai_message(message, out)
    for key in ("tools", "functions"):
        if body.get(key):
            out.append(_json(body[key]))
    response_format = _dict(body.get("response_format"))
    if "json_schema" in response_format:
        out.append(_json(response_format["json_schema"]))
    _openai_parts(body.get("prompt"), out)
    _add_str(body.get("instructions"), out)
    given = body.get("input")
    if type(given) is str:
        out.append(given)
    for item in _list(given):
        if type(item) is str:
            out.append(item)
        elif type(item) is dict:
            _openai_message(item, out)
    return messages


def _anthropic_request(body: dict[str, Any], out: list[str]) -> int:
    messages = 0
    system = body.get("system")
    if system:
        messages += 1
        _anthropic_blocks(system, out)
    for message in _list(body.get("messages")):
        if type(message) is dict:
            messages += 1
            _anthropic_blocks(message.get("content"), out)
    if body.get("tools"):
        out.append(_json(body["tools"]))
    return messages


def request_text(dialect: Dialect, body: object) -> tuple[str, int]:
    """The text to estimate input tokens from, and the number of messages it came in."""
    if type(body) is not dict:
        return "", 0
    out: list[str] = []
    if dialect == "anthropic":
        messages = _anthropic_request(body, out)
    else:
        messages = _openai_request(body, out)
    return _joined(out), messages


def _token_array(value: object) -> int:
    """The length of a list of token ids, or 0 for anything else."""
    items = _list(value)
    return len(items) if items and all(type(item) is int for item in items) else 0


def request_token_ids(dialect: Dialect, body: object) -> int:
    """Input tokens a request gives as token ids: an OpenAI embeddings `input` or a
    completions `prompt` that is a token array or a list of them."""
    if dialect != "openai" or type(body) is not dict:
        return 0
    total = 0
    for key in ("input", "prompt"):
        given = body.get(key)
        tokens = _token_array(given)
        total += tokens if tokens else sum(map(_token_array, _list(given)))
    return total


def _loads_large(body: bytes | bytearray) -> object:
    """orjson.loads with the garbage collector paused: every container it builds is new
    and acyclic, yet each one counts toward a collection, and the full collections that
    follow made a 30 MB body of empty arrays take 9 s instead of 1 s."""
    if not gc.isenabled():
        return orjson.loads(body)
    gc.disable()
    try:
        return orjson.loads(body)
    finally:
        gc.enable()


def request_fields(body: bytes | bytearray) -> RequestInfo | None:
    """Parse a request body once; None when it is not a JSON object, or when it holds more
    JSON values than MAX_JSON_STRUCTURE allows (it is then forwarded unparsed)."""
    try:
        if len(body) < MAX_JSON_STRUCTURE:
            parsed = orjson.loads(body)
        elif body.count(b",") + body.count(b"[") + body.count(b"{") > MAX_JSON_STRUCTURE:
            return None
        else:
            parsed = _loads_large(body)
    except orjson.JSONDecodeError:
        return None
    if type(parsed) is not dict:
        return None
    model = parsed.get("model")
    return RequestInfo(
        model=model if type(model) is str else None,
        stream=parsed.get("stream") is True,
        include_usage=_dict(parsed.get("stream_options")).get("include_usage") is True,
        parsed=parsed,
    )
