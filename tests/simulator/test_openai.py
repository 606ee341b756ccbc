"""The OpenAI chat-completions dialect, streamed and not, with and without usage."""

import httpx
import orjson

from zai_proxy.simulator.behaviour import DEFAULT_TEXT

from .wire import json_events

CHAT = "/api/paas/v4/chat/completions"
REQUEST = {"model": "glm-4.5-air", "messages": [{"role": "user", "content": "Say something."}]}


def test_a_completion_is_a_chat_completion_object_with_default_usage(client: httpx.Client) -> None:
    body = orjson.dumps(REQUEST)
    answer = client.post(CHAT, content=body).json()
    assert answer["object"] == "chat.completion"
    assert answer["id"] and isinstance(answer["created"], int)
    assert answer["model"] == "glm-4.5-air"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": DEFAULT_TEXT}
    assert answer["choices"][0]["finish_reason"] == "stop"
    words = len(DEFAULT_TEXT.split())
    assert answer["usage"] == {
        "prompt_tokens": len(body) // 4,
        "completion_tokens": words,
        "total_tokens": len(body) // 4 + words,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_usage_headers_set_the_exact_numbers(client: httpx.Client) -> None:
    headers = {
        "x-sim-prompt-tokens": "1200",
        "x-sim-completion-tokens": "300",
        "x-sim-cached-tokens": "1000",
        "x-sim-reasoning-tokens": "120",
    }
    usage = client.post(CHAT, json=REQUEST, headers=headers).json()["usage"]
    assert usage["prompt_tokens"] == 1200
    assert usage["completion_tokens"] == 300
    assert usage["total_tokens"] == 1500
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1000}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 120}


def test_usage_none_leaves_out_the_usage_key(client: httpx.Client) -> None:
    answer = client.post(CHAT, json=REQUEST, headers={"x-sim-usage": "none"}).json()
    assert "usage" not in answer


def test_the_text_header_sets_the_output_even_in_utf8(client: httpx.Client) -> None:
    text = "Grüße aus Zürich, 你好"
    answer = client.post(CHAT, json=REQUEST, headers={b"x-sim-text": text.encode()}).json()
    assert answer["choices"][0]["message"]["content"] == text
    assert answer["usage"]["completion_tokens"] == 4


def test_a_stream_without_include_usage_has_no_usage_anywhere(client: httpx.Client) -> None:
    response = client.post(CHAT, json={**REQUEST, "stream": True}, headers={"x-sim-chunks": "4"})
    assert response.headers["content-type"] == "text/event-stream"
    events = json_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("usage" not in chunk for chunk in chunks)
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len(chunks) == 4 + 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in chunk["choices"][0]["delta"] for chunk in chunks[1:])
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert text == DEFAULT_TEXT
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * 4 + ["stop"]


def test_include_usage_adds_null_usage_and_a_final_usage_chunk(client: httpx.Client) -> None:
    request = {**REQUEST, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"x-sim-prompt-tokens": "50", "x-sim-completion-tokens": "7"}
    events = json_events(client.post(CHAT, json=request, headers=headers).text)
    assert events[-1] == "[DONE]"
    *chunks, final = events[:-1]
    assert all(chunk["usage"] is None for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert final["choices"] == []
    assert final["usage"]["prompt_tokens"] == 50
    assert final["usage"]["completion_tokens"] == 7
    assert final["usage"]["total_tokens"] == 57


def test_usage_none_wins_over_include_usage(client: httpx.Client) -> None:
    request = {**REQUEST, "stream": True, "stream_options": {"include_usage": True}}
    events = json_events(client.post(CHAT, json=request, headers={"x-sim-usage": "none"}).text)
    assert all("usage" not in event for event in events[:-1])
    assert all(event["choices"] for event in events[:-1])


def test_the_model_list_is_an_openai_list(client: httpx.Client) -> None:
    answer = client.get("/api/paas/v4/models").json()
    assert answer["object"] == "list"
    assert {"glm-4.6", "glm-4.5"} <= {model["id"] for model in answer["data"]}


def test_one_model_is_answered_by_its_id_and_an_unknown_one_is_404(client: httpx.Client) -> None:
    listed = client.get("/api/paas/v4/models").json()["data"]
    assert client.get(f"/api/paas/v4/models/{listed[0]['id']}").json() == listed[0]
    missing = client.get("/api/paas/v4/models/no-such-model")
    assert missing.status_code == 404
    assert "no-such-model" in missing.json()["error"]["message"]
