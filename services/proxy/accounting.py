"""Token accounting of one exchange: exact from the upstream's usage, estimated otherwise.

The request body is parsed once. An OpenAI stream whose client did not ask for usage gets
``stream_options.include_usage`` added on the way up, and the usage-only chunk (and the
``"usage":null`` fields that come with it) taken out on the way down, so every stream is
counted exactly and the client still receives the stream it asked for. While that filter
runs, only complete SSE events are passed on: an SSE client cannot act on half an event,
so holding the tail of one until its blank line arrives delays nothing it could use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from dataclasses import dataclass

import orjson

from zai_proxy.proxy.response_facts import ResponseFacts
from zai_proxy.proxy.routing import Dialect, Route
from zai_proxy.proxy.streaming import SSESplitter, event_data
from zai_proxy.proxy.tokens import TokenEstimator
from zai_proxy.proxy.usage import (
    AnthropicStreamAccount,
    OpenAIStreamAccount,
    RequestInfo,
    Usage,
    anthropic_output_text,
    anthropic_usage,
    openai_output_text,
    openai_usage,
    request_fields,
    request_text,
    request_token_ids,
    tail_usage,
)

# Routes that spend tokens; others (count_tokens, models, files) are not counted.
COUNTED_ROUTES = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages"}
)
# Routes whose streams carry usage only when asked (OpenAI's stream_options).
_USAGE_OPTIONAL = frozenset({"/v1/chat/completions", "/v1/completions"})
# `"usage":null` with its comma, also when pretty-printed over several `data:` lines.
_USAGE_NULL = re.compile(rb'"usage"\s*:\s*null\s*,(?:\s|data:)*|,(?:\s|data:)*"usage"\s*:\s*null')
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'
# Non-streamed answers up to this size are parsed whole for their usage; of a larger one
# only the last USAGE_TAIL_BYTES are kept, where the usage object sits.
MAX_JSON_BODY = 8 * 1024 * 1024
USAGE_TAIL_BYTES = 64 * 1024
# Request bodies from this size on are not kept parsed; their text for an estimate is
# collected on a thread.
OFFLOAD_BODY_BYTES = 256 * 1024
# A request body as read: a bytearray filled in place (one copy), or bytes.
Body = bytes | bytearray


@dataclass(slots=True)
class Request:
    """What the proxy learned from a request body, and the body to send upstream (the one
    copy of it the proxy holds: a large body's parsed form is not kept)."""

    body: Body
    info: RequestInfo | None
    injected: bool = False
    counted: bool = True

    @property
    def model(self) -> str | None:
        return self.info.model if self.info else None


class StreamTap:
    """Reads usage out of an SSE stream as it passes; optionally removes injected usage."""

    def __init__(
        self, dialect: Dialect, strip_usage: bool, facts: ResponseFacts | None = None
    ) -> None:
        self.strip_usage = strip_usage
        self.facts = facts  # set when the request's span is recorded
        self.splitter = SSESplitter()
        self.account: OpenAIStreamAccount | AnthropicStreamAccount = (
            AnthropicStreamAccount() if dialect == "anthropic" else OpenAIStreamAccount()
        )
        self._held = 0  # bytes received and not yet passed on (strip mode)

    def feed(self, chunk: bytes) -> bytes:
        """Account for a chunk; return the bytes to pass on to the client now."""
        splitter = self.splitter
        if splitter.overflowed:
            return chunk
        if not self.strip_usage:
            for event in splitter.feed(chunk):
                self._account(event)
            return chunk
        held = splitter.pending if self._held + len(chunk) > splitter.max_event_bytes else b""
        events = splitter.feed(chunk)
        if splitter.overflowed:
            # One event is too large to hold: stop filtering, pass everything on as it comes.
            return held + chunk
        self._held += len(chunk) - sum(map(len, events))
        return self._filter(events)

    def flush(self) -> bytes:
        """At the end of the stream: account for the last events; return what is still held."""
        if self.splitter.overflowed:
            return b""
        events = self.splitter.flush()
        if not self.strip_usage:
            for event in events:
                self._account(event)
            return b""
        return self._filter(events) + self.splitter.pending

    def _filter(self, events: list[bytes]) -> bytes:
        out = []
        for event in events:
            obj = self._account(event)
            if b'"usage"' in event:
                if obj is not None and obj.get("choices") == [] and obj.get("usage") is not None:
                    continue
                event = _USAGE_NULL.sub(b"", event)
            out.append(event)
        return b"".join(out)

    def _account(self, event: bytes) -> dict | None:
        data = event_data(event)
        if data is None or data == b"[DONE]":
            return None
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        self.account.feed(obj)
        if self.facts is not None:
            self.facts.feed(obj)
        return obj if isinstance(obj, dict) else None


class JsonBody:
    """A non-streamed JSON answer as it passes, kept for its usage: whole up to
    MAX_JSON_BODY, beyond that only its tail."""

    __slots__ = ("cut", "data")

    def __init__(self) -> None:
        self.data = bytearray()
        self.cut = False

    def feed(self, chunk: bytes) -> None:
        data = self.data
        data += chunk
        if len(data) > MAX_JSON_BODY:
            self.cut = True
            del data[:-USAGE_TAIL_BYTES]


class Accounting:
    """Per-request token accounting; one instance per process."""

    def __init__(self, estimator: TokenEstimator | None) -> None:
        self.estimator = estimator

    @property
    def enabled(self) -> bool:
        return self.estimator is not None

    def prepare(self, route: Route, method: str, body: Body) -> Request:
        """Parse the request once; add usage to OpenAI streams that did not ask for it."""
        request = self._prepare(route, method, body)
        info = request.info
        if info is not None and len(body) >= OFFLOAD_BODY_BYTES:
            # Held for the whole exchange, the parsed form of a large body would cost as
            # much memory again: an estimate (rare: upstreams report usage) parses anew.
            request.info = dataclasses.replace(info, parsed=None)
        return request

    def _prepare(self, route: Route, method: str, body: Body) -> Request:
        if not self.enabled or method != "POST" or not body:
            return Request(body, None, counted=route.template in COUNTED_ROUTES)
        info = request_fields(body)
        if route.template not in COUNTED_ROUTES:
            return Request(body, info, counted=False)
        if info is None or not info.stream or route.dialect != "openai":
            return Request(body, info)
        if info.include_usage or route.template not in _USAGE_OPTIONAL:
            return Request(body, info)
        parsed = info.parsed
        assert isinstance(parsed, dict)  # request_fields only returns objects
        options = parsed.get("stream_options")
        if options is None:
            start = body.index(b"{") + 1
            return Request(body[:start] + _INCLUDE_USAGE + body[start:], info, injected=True)
        if isinstance(options, dict):
            updated = {**parsed, "stream_options": {**options, "include_usage": True}}
            return Request(orjson.dumps(updated), info, injected=True)
        return Request(body, info)

    def reads_answer(self, request: Request, facts: ResponseFacts | None) -> bool:
        """Whether the answer is parsed: to count its tokens, or (with counting off) for
        what it says of itself on a recorded span."""
        return request.counted and (self.enabled or facts is not None)

    def tap(
        self, route: Route, request: Request, facts: ResponseFacts | None = None
    ) -> StreamTap | None:
        """A tap for a streamed answer, or None when it is not read."""
        if not self.reads_answer(request, facts):
            return None
        return StreamTap(route.dialect, strip_usage=request.injected, facts=facts)

    def usage_of_body(
        self, dialect: Dialect, body: bytes, facts: ResponseFacts | None = None
    ) -> tuple[Usage | None, str]:
        """Usage and output text of a non-streamed JSON answer (and its facts, if asked)."""
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, ""
        if facts is not None:
            facts.feed_whole(obj)
        if dialect == "anthropic":
            usage = anthropic_usage(obj)
            return usage, "" if usage else anthropic_output_text(obj)
        usage = openai_usage(obj)
        return usage, "" if usage else openai_output_text(obj)

    def usage_of_json(
        self, dialect: Dialect, body: JsonBody, facts: ResponseFacts | None = None
    ) -> tuple[Usage | None, str]:
        """Usage and output text of a JSON answer read chunk by chunk; of one too large to
        parse whole, the usage in its tail (and no text: an estimate counts input only)."""
        if body.cut:
            return tail_usage(dialect, body.data), ""
        return self.usage_of_body(dialect, bytes(body.data), facts)

    async def estimate(
        self, dialect: Dialect, request: Request, output_text: str, overflow_chars: int = 0
    ) -> Usage:
        """Estimate a whole exchange with the local tokenizer."""
        assert self.estimator is not None
        usage = Usage()
        if request.info is not None:
            if request.info.parsed is not None:
                text, messages, token_ids = _request_text_of(dialect, request.info.parsed)
            else:
                # Parsing and walking a large body is slow (a second per million messages):
                # on a thread the loop keeps serving, as the interpreter switches every 5 ms.
                text, messages, token_ids = await asyncio.to_thread(
                    _request_text, dialect, request.body
                )
            usage.input = await self.estimator.count_async(text) + token_ids
            if messages:
                usage.input = self.estimator.estimate_input_from_count(usage.input, messages)
        if output_text or overflow_chars:
            usage.output = await self.estimator.count_async(output_text)
            if overflow_chars:
                usage.output = self.estimator.extrapolate(
                    usage.output, len(output_text), overflow_chars
                )
        return usage


def _request_text_of(dialect: Dialect, parsed: dict) -> tuple[str, int, int]:
    """A request's text, its number of messages and the tokens it gives as token ids."""
    text, messages = request_text(dialect, parsed)
    return text, messages, request_token_ids(dialect, parsed)


def _request_text(dialect: Dialect, body: Body) -> tuple[str, int, int]:
    """`_request_text_of` a request body kept unparsed, for an estimate."""
    info = request_fields(body)
    if info is None or info.parsed is None:
        return "", 0, 0
    return _request_text_of(dialect, info.parsed)
