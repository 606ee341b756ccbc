"""What an answer says about itself, for its trace: id, model, finish reasons, output text.

Fed the JSON the token accounting parses anyway (a whole answer, or each stream event),
only for a request whose span is recorded: an untraced request pays nothing here.

- OpenAI: ``id`` and ``model`` of the answer (of every chunk of a stream: the first
  non-empty one is kept), ``choices[].finish_reason`` (a stream's come in its last chunks).
- Anthropic: ``id`` and ``model`` of the message (of ``message_start`` when streamed),
  ``stop_reason`` (of ``message_delta`` when streamed).

Finish reasons are kept once each, in the order seen, at most MAX_FINISH_REASONS. Output
text is collected only when content capture is on (``capture``), from whole answers (a
stream's text comes from its accountant).
"""

from __future__ import annotations

from typing import Any

from zai_proxy.proxy.routing import Dialect
from zai_proxy.proxy.usage import anthropic_output_text, openai_output_text

MAX_FINISH_REASONS = 16
MAX_FIELD_CHARS = 256


def _text(value: object) -> str:
    return value[:MAX_FIELD_CHARS] if type(value) is str else ""


class ResponseFacts:
    """The id, model and finish reasons of one answer, as they pass."""

    __slots__ = ("capture", "dialect", "finish_reasons", "id", "model", "output_text")

    def __init__(self, dialect: Dialect, *, capture: bool = False) -> None:
        self.dialect = dialect
        self.capture = capture
        self.id = ""
        self.model = ""
        self.finish_reasons: list[str] = []
        self.output_text = ""

    def _finish(self, reason: object) -> None:
        if (
            type(reason) is str
            and reason
            and reason not in self.finish_reasons
            and len(self.finish_reasons) < MAX_FINISH_REASONS
        ):
            self.finish_reasons.append(reason[:MAX_FIELD_CHARS])

    def _identity(self, obj: dict[str, Any]) -> None:
        if not self.id:
            self.id = _text(obj.get("id"))
        if not self.model:
            self.model = _text(obj.get("model"))

    def feed(self, obj: object) -> None:
        """Read one parsed answer or stream event (any JSON value: others are ignored)."""
        if type(obj) is not dict:
            return
        if self.dialect == "anthropic":
            self._anthropic(obj)
            return
        self._identity(obj)
        choices = obj.get("choices")
        if type(choices) is list:
            for choice in choices:
                if type(choice) is dict:
                    self._finish(choice.get("finish_reason"))

    def feed_whole(self, obj: object) -> None:
        """Read a whole (non-streamed) answer; its output text too when capturing."""
        self.feed(obj)
        if self.capture:
            self.output_text = (
                anthropic_output_text(obj)
                if self.dialect == "anthropic"
                else openai_output_text(obj)
            )

    def _anthropic(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "message":
            self._identity(obj)
            self._finish(obj.get("stop_reason"))
        elif kind == "message_start":
            message = obj.get("message")
            if type(message) is dict:
                self._identity(message)
        elif kind == "message_delta":
            delta = obj.get("delta")
            if type(delta) is dict:
                self._finish(delta.get("stop_reason"))
