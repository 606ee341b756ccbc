"""OpenAI chat-completions answers: the JSON object, the SSE chunk stream and the model list."""

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from .behaviour import Usage
from .sse import SseFormat

MODELS = ("glm-4.6", "glm-4.5", "glm-4.5-air", "glm-4.5-flash")
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


def completion(ident: str, created: int, model: str, text: str, usage: Usage | None) -> bytes:
    """A non-streamed `chat.completion` object."""
    body: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
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

    def content_event(self, text: str) -> bytes:
        """One framed content event, built once and repeated by `bulk_events`."""
        return self._fmt.event(self._chunk({"content": text}, None))

    def bulk_events(self, event: bytes, count: int, usage: Usage | None) -> Iterator[bytes]:
        """A role event, then `count` copies of a prebuilt content event, then the end."""
        yield self._fmt.event(self._chunk({"role": "assistant", "content": ""}, None))
        for _ in range(count):
            yield event
        yield from self._tail(usage)

    def _tail(self, usage: Usage | None) -> Iterator[bytes]:
        yield self._fmt.event(self._chunk({}, "stop"))
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

    def _chunk(self, delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
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


def model_list(created: int) -> bytes:
    """An OpenAI `list` of the models the simulator pretends to serve."""
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": created, "owned_by": "z-ai"}
                for name in MODELS
            ],
        }
    )
