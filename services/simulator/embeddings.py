"""OpenAI embeddings answers: deterministic unit vectors derived from each input.

The same input (text, or token array) always gets the same vector, whatever else the
request holds, so a test can compare vectors across requests and processes: the vector is
drawn from a generator seeded with a hash of the input, then scaled to length 1 (as
OpenAI's are) and cut to the `dimensions` asked for.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_MODEL = "embedding-3"
# Z.ai's embedding-3 answers 2048 dimensions unless asked for fewer.
DEFAULT_DIMENSIONS = 2048
MAX_DIMENSIONS = 8192
# OpenAI refuses more inputs than this in one request.
MAX_INPUTS = 2048
ENCODINGS = ("float", "base64")


class EmbeddingRequestError(ValueError):
    """The embeddings request cannot be answered (a 400, as the real API answers)."""


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """The fields of an embeddings request the simulator answers by."""

    inputs: tuple[str | tuple[int, ...], ...]
    model: str
    dimensions: int
    encoding: str


def parse_request(request: dict[str, Any]) -> EmbeddingRequest:
    """Read and check an embeddings request body; EmbeddingRequestError when it is unusable."""
    inputs = _inputs(request.get("input"))
    model = request.get("model")
    dimensions = request.get("dimensions", DEFAULT_DIMENSIONS)
    if type(dimensions) is not int or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise EmbeddingRequestError(f"dimensions must be an integer from 1 to {MAX_DIMENSIONS}")
    encoding = request.get("encoding_format", "float")
    if encoding not in ENCODINGS:
        raise EmbeddingRequestError("encoding_format must be float or base64")
    return EmbeddingRequest(
        inputs=inputs,
        model=model if isinstance(model, str) and model else DEFAULT_MODEL,
        dimensions=dimensions,
        encoding=encoding,
    )


def _tokens(value: object) -> tuple[int, ...] | None:
    if type(value) is not list or not value:
        return None
    if not all(type(token) is int and token >= 0 for token in value):
        return None
    return tuple(value)


def _inputs(value: object) -> tuple[str | tuple[int, ...], ...]:
    """`input` as OpenAI takes it: a string, a list of strings, a token array, or a list of
    token arrays; none of them empty."""
    if isinstance(value, str):
        if not value:
            raise EmbeddingRequestError("input must not be an empty string")
        return (value,)
    tokens = _tokens(value)
    if tokens is not None:
        return (tokens,)
    if type(value) is not list or not value:
        raise EmbeddingRequestError(
            "input must be a string, a list of strings or a list of token arrays"
        )
    if len(value) > MAX_INPUTS:
        raise EmbeddingRequestError(f"input holds more than {MAX_INPUTS} items")
    items: list[str | tuple[int, ...]] = []
    for item in value:
        if isinstance(item, str) and item:
            items.append(item)
            continue
        tokens = _tokens(item)
        if tokens is None:
            raise EmbeddingRequestError(
                "each input item must be a non-empty string or a non-empty token array"
            )
        items.append(tokens)
    return tuple(items)


def input_tokens(item: str | tuple[int, ...]) -> int:
    """The tokens one input counts for: a token array its length, a text one per 4 UTF-8
    bytes (rounded up), as the simulator has no tokenizer."""
    if isinstance(item, tuple):
        return len(item)
    return -(-len(item.encode()) // 4)


def vector(item: str | tuple[int, ...], dimensions: int) -> list[float]:
    """The unit vector of one input, the same in every run and process."""
    key = b"text:" + item.encode() if isinstance(item, str) else b"tokens:" + orjson.dumps(item)
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
    draw = random.Random(seed).gauss
    values = [draw(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(math.fsum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _encoded(values: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        # OpenAI's base64 form: the little-endian float32 array.
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def answer(request: EmbeddingRequest, prompt_tokens: int | None) -> bytes:
    """The `list` of embeddings, with usage unless `prompt_tokens` is None."""
    body: dict[str, Any] = {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": index,
                "embedding": _encoded(vector(item, request.dimensions), request.encoding),
            }
            for index, item in enumerate(request.inputs)
        ],
        "model": request.model,
    }
    if prompt_tokens is not None:
        body["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return orjson.dumps(body)
