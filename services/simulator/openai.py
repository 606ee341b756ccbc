"""OpenAI chat-completions answers: the JSON object, the SSE chunk stream and the model list."""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from .behaviour import Usage
from .sse import SseFormat
from .text import split_text
from .tools import ToolCall

MODELS = ("glm-4.6", "glm-4.5", "glm-4.5-air", "glm-4.5-flash", "embedding-3")
DONE = b"[DONE]"


def usage_object(usage: Usage) -> dict[str, Any]:
    """The `usage` object OpenAI reports."""
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "total_tokens": usage.prompt + usage.completion,
        "prompt_tokens_details": {"cached_tokens": usage.cached},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    }


def call_id(ident: str, index: int) -> str:
    """The id of a completion's `index`-th tool call."""
    return f"call_{ident.rpartition('-')[2]}_{index}"


def completion(
    ident: str,
    created: int,
    model: str,
    text: str,
    usage: Usage | None,
    calls: Sequence[ToolCall] = (),
) -> bytes:
    """A non-streamed `chat.completion` object: the text, or the tool calls (no text)."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": call_id(ident, index),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for index, call in enumerate(calls)
        ]
    body: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage_object(usage)
    return orjson.dumps(body)


class ChunkStream:
    """Builds the SSE events of one streamed completion."""

    __slots__ = ("_created", "_fmt", "_ident", "_include_usage", "_model")

    def __init__(
        self, fmt: SseFormat, ident: str, created: int, model: str, include_usage: bool
    ) -> None:
        self._fmt = fmt
        self._ident = ident
        self._created = created
        self._model = model
        # As OpenAI does: usage appears (null, then a final chunk) only when the client asked.
        self._include_usage = include_usage

    def events(self, pieces: Iterable[str], usage: Usage | None) -> Iterator[bytes]:
        """One event per piece of text (the first with the role), then the end of the stream."""
        role: dict[str, str] | None = {"role": "assistant"}
        for piece in pieces:
            if role is not None:
                delta, role = {**role, "content": piece}, None
            else:
                delta = {"content": piece}
            yield self._fmt.event(self._chunk(delta, None))
        yield from self._tail(usage)

    def tool_events(
        self, calls: Sequence[ToolCall], pieces: int, usage: Usage | None
    ) -> Iterator[bytes]:
        """Each call as OpenAI streams it (index, id and name first, then its arguments in
        `pieces` fragments), then the end of the stream."""
        role: dict[str, Any] | None = {"role": "assistant", "content": None}
        for index, call in enumerate(calls):
            opening = {
                "index": index,
                "id": call_id(self._ident, index),
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            delta: dict[str, Any] = {"tool_calls": [opening]}
            if role is not None:
                delta, role = {**role, **delta}, None
            yield self._fmt.event(self._chunk(delta, None))
            for piece in split_text(call.arguments, pieces):
                if piece:
                    fragment = {"index": index, "function": {"arguments": piece}}
                    yield self._fmt.event(self._chunk({"tool_calls": [fragment]}, None))
        yield from self._tail(usage, "tool_calls")

    def content_event(self, text: str) -> bytes:
        """One framed content event, built once and repeated by `bulk_events`."""
        return self._fmt.event(self._chunk({"content": text}, None))

    def bulk_events(self, event: bytes, count: int, usage: Usage | None) -> Iterator[bytes]:
        """A role event, then `count` copies of a prebuilt content event, then the end."""
        yield self._fmt.event(self._chunk({"role": "assistant", "content": ""}, None))
        for _ in range(count):
            yield event
        yield from self._tail(usage)

    def _tail(self, usage: Usage | None, finish_reason: str = "stop") -> Iterator[bytes]:
        yield self._fmt.event(self._chunk({}, finish_reason))
        if self._include_usage and usage is not None:
            yield self._fmt.event(
                {
                    "id": self._ident,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": usage_object(usage),
                }
            )
        yield self._fmt.event(DONE)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self._ident,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        if self._include_usage:
            chunk["usage"] = None
        return chunk


def _model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "z-ai"}


def model_list(created: int) -> bytes:
    """An OpenAI `list` of the models the simulator pretends to serve."""
    return orjson.dumps({"object": "list", "data": [_model(name, created) for name in MODELS]})


def model(name: str, created: int) -> bytes | None:
    """One served model, as `GET .../models/<name>` answers it; None when it is not served."""
    return orjson.dumps(_model(name, created)) if name in MODELS else None
