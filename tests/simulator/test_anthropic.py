"""The Anthropic Messages dialect: message object, typed event stream, token counting."""

import httpx
import orjson

from zai_proxy.simulator.behaviour import DEFAULT_TEXT

from .wire import parse_sse

MESSAGES = "/api/anthropic/v1/messages"
REQUEST = {
    "model": "glm-4.6",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Say something."}],
}
USAGE_HEADERS = {
    "x-sim-prompt-tokens": "900",
    "x-sim-completion-tokens": "42",
    "x-sim-cached-tokens": "800",
    "x-sim-cache-creation-tokens": "64",
}


def test_a_message_is_an_anthropic_message_with_usage(client: httpx.Client) -> None:
    answer = client.post(MESSAGES, json=REQUEST, headers=USAGE_HEADERS).json()
    assert answer["type"] == "message"
    assert answer["role"] == "assistant"
    assert answer["model"] == "glm-4.6"
    assert answer["content"] == [{"type": "text", "text": DEFAULT_TEXT}]
    assert answer["stop_reason"] == "end_turn"
    assert answer["usage"] == {
        "input_tokens": 900,
        "output_tokens": 42,
        "cache_creation_input_tokens": 64,
        "cache_read_input_tokens": 800,
    }


def test_default_usage_counts_the_body_and_the_words(client: httpx.Client) -> None:
    body = orjson.dumps(REQUEST)
    usage = client.post(MESSAGES, content=body).json()["usage"]
    assert usage["input_tokens"] == len(body) // 4
    assert usage["output_tokens"] == len(DEFAULT_TEXT.split())


def test_usage_none_leaves_out_usage(client: httpx.Client) -> None:
    answer = client.post(MESSAGES, json=REQUEST, headers={"x-sim-usage": "none"}).json()
    assert "usage" not in answer


def test_a_stream_follows_the_anthropic_event_sequence(client: httpx.Client) -> None:
    headers = {**USAGE_HEADERS, "x-sim-chunks": "3"}
    response = client.post(MESSAGES, json={**REQUEST, "stream": True}, headers=headers)
    assert response.headers["content-type"] == "text/event-stream"
    events = [(name, orjson.loads(data)) for name, data in parse_sse(response.text)]
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["usage"] == {
        "input_tokens": 900,
        "cache_creation_input_tokens": 64,
        "cache_read_input_tokens": 800,
        "output_tokens": 1,
    }
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert all(delta["type"] == "text_delta" for delta in deltas)
    assert "".join(delta["text"] for delta in deltas) == DEFAULT_TEXT
    message_delta = events[-2][1]
    assert message_delta["delta"]["stop_reason"] == "end_turn"
    assert message_delta["usage"] == {"output_tokens": 42}


def test_a_stream_without_usage_has_no_usage_objects(client: httpx.Client) -> None:
    response = client.post(
        MESSAGES, json={**REQUEST, "stream": True}, headers={"x-sim-usage": "none"}
    )
    events = dict((name, orjson.loads(data)) for name, data in parse_sse(response.text))
    assert "usage" not in events["message_start"]["message"]
    assert "usage" not in events["message_delta"]


def test_count_tokens_answers_input_tokens(client: httpx.Client) -> None:
    body = orjson.dumps(REQUEST)
    path = "/api/anthropic/v1/messages/count_tokens"
    assert client.post(path, content=body).json() == {"input_tokens": len(body) // 4}
    answer = client.post(path, content=body, headers={"x-sim-prompt-tokens": "77"}).json()
    assert answer == {"input_tokens": 77}
