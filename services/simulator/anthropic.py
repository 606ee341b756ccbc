"""Anthropic Messages answers: the message object, the typed SSE event stream, token counts."""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from .behaviour import Usage
from .sse import SseFormat
from .text import split_text
from .tools import ToolCall

_PING = {"type": "ping"}
_BLOCK_START = {
    "type": "content_block_start",
    "index": 0,
    "content_block": {"type": "text", "text": ""},
}
_BLOCK_STOP = {"type": "content_block_stop", "index": 0}
_MESSAGE_STOP = {"type": "message_stop"}


def usage_object(usage: Usage, output_tokens: int) -> dict[str, int]:
    """The `usage` object Anthropic reports (input_tokens is the prompt as the proxy counts it)."""
    return {
        "input_tokens": usage.prompt,
        "cache_creation_input_tokens": usage.cache_creation,
        "cache_read_input_tokens": usage.cached,
        "output_tokens": output_tokens,
    }


def tool_use_id(ident: str, index: int) -> str:
    """The id of a message's `index`-th tool_use block."""
    return f"toolu_{ident.rpartition('_')[2]}_{index}"


def message(
    ident: str, model: str, text: str, usage: Usage | None, calls: Sequence[ToolCall] = ()
) -> bytes:
    """A non-streamed `message` object: one text block, or one tool_use block per call."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if calls:
        content = [
            {
                "type": "tool_use",
                "id": tool_use_id(ident, index),
                "name": call.name,
                "input": call.input,
            }
            for index, call in enumerate(calls)
        ]
    body: dict[str, Any] = {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if calls else "end_turn",
        "stop_sequence": None,
    }
    if usage is not None:
        body["usage"] = usage_object(usage, usage.completion)
    return orjson.dumps(body)


def count_tokens(input_tokens: int) -> bytes:
    """The answer of `/v1/messages/count_tokens`."""
    return b'{"input_tokens":%d}' % input_tokens


class EventStream:
    """Builds the SSE events of one streamed message."""

    __slots__ = ("_fmt", "_ident", "_model")

    def __init__(self, fmt: SseFormat, ident: str, model: str) -> None:
        self._fmt = fmt
        self._ident = ident
        self._model = model

    def events(self, pieces: Iterable[str], usage: Usage | None) -> Iterator[bytes]:
        """The opening events, one text delta per piece, then the closing events."""
        yield from self._head(usage)
        event = self._fmt.event
        for piece in pieces:
            yield event(_delta(piece), b"content_block_delta")
        yield from self._tail(usage)

    def tool_events(
        self, calls: Sequence[ToolCall], pieces: int, usage: Usage | None
    ) -> Iterator[bytes]:
        """The opening events, then per call a tool_use block whose input arrives as
        `input_json_delta` fragments, then the closing events (stop_reason tool_use)."""
        event = self._fmt.event
        yield event({"type": "message_start", "message": self._start(usage)}, b"message_start")
        for index, call in enumerate(calls):
            block = {
                "type": "tool_use",
                "id": tool_use_id(self._ident, index),
                "name": call.name,
                "input": {},
            }
            start = {"type": "content_block_start", "index": index, "content_block": block}
            yield event(start, b"content_block_start")
            if index == 0:
                yield event(_PING, b"ping")
            for piece in split_text(call.arguments, pieces):
                if piece:
                    yield event(_json_delta(index, piece), b"content_block_delta")
            yield event({"type": "content_block_stop", "index": index}, b"content_block_stop")
        yield from self._end(usage, "tool_use")

    def content_event(self, text: str) -> bytes:
        """One framed text delta, built once and repeated by `bulk_events`."""
        return self._fmt.event(_delta(text), b"content_block_delta")

    def bulk_events(self, event: bytes, count: int, usage: Usage | None) -> Iterator[bytes]:
        """The opening events, `count` copies of a prebuilt delta event, then the end."""
        yield from self._head(usage)
        for _ in range(count):
            yield event
        yield from self._tail(usage)

    def _start(self, usage: Usage | None) -> dict[str, Any]:
        start: dict[str, Any] = {
            "id": self._ident,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if usage is not None:
            # Anthropic reports a placeholder output count at the start, the real one at the end.
            start["usage"] = usage_object(usage, 1)
        return start

    def _head(self, usage: Usage | None) -> Iterator[bytes]:
        event = self._fmt.event
        yield event({"type": "message_start", "message": self._start(usage)}, b"message_start")
        yield event(_BLOCK_START, b"content_block_start")
        yield event(_PING, b"ping")

    def _tail(self, usage: Usage | None) -> Iterator[bytes]:
        yield self._fmt.event(_BLOCK_STOP, b"content_block_stop")
        yield from self._end(usage, "end_turn")

    def _end(self, usage: Usage | None, stop_reason: str) -> Iterator[bytes]:
        event = self._fmt.event
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        }
        if usage is not None:
            delta["usage"] = {"output_tokens": usage.completion}
        yield event(delta, b"message_delta")
        yield event(_MESSAGE_STOP, b"message_stop")


def _delta(text: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }


def _json_delta(index: int, partial_json: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "input_json_delta", "partial_json": partial_json},
    }
