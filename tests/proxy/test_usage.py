"""Usage extraction and output text: real payload shapes, hostile ones, bounded memory."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zai_proxy.proxy.streaming import SSESplitter, event_data
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
from zai_proxy.simulator import anthropic as sim_anthropic
from zai_proxy.simulator import openai as sim_openai
from zai_proxy.simulator.sse import PLAIN
from zai_proxy.simulator.text import split_text
from zai_proxy.simulator.tools import tool_calls

OPENAI_TOOL_CALL_RESPONSE: dict[str, Any] = orjson.loads(
    b"""{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [{
    "index": 0,
    "message": {
      "role": "assistant",
      "content": null,
      "tool_calls": [{
        "id": "call_abc123",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{\\"location\\":\\"Paris, France\\"}"}
      }],
      "refusal": null,
      "annotations": []
    },
    "logprobs": null,
    "finish_reason": "tool_calls"
  }],
  "usage": {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
      "reasoning_tokens": 0, "audio_tokens": 0,
      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
    }
  },
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035"
}"""
)

GLM_RESPONSE: dict[str, Any] = orjson.loads(
    b"""{
  "choices": [{
    "finish_reason": "stop",
    "index": 0,
    "message": {
      "content": "Hello! How can I help you today?",
      "reasoning_content": "The user greets me. I should greet back.",
      "role": "assistant"
    }
  }],
  "created": 1760083200,
  "id": "20251010160000a1b2c3d4e5f64a7b",
  "model": "glm-4.6",
  "object": "chat.completion",
  "request_id": "20251010160000a1b2c3d4e5f64a7b",
  "usage": {
    "completion_tokens": 58,
    "prompt_tokens": 12,
    "prompt_tokens_details": {"cached_tokens": 4},
    "total_tokens": 70
  }
}"""
)

O3_RESPONSE_USAGE = {
    "prompt_tokens": 2048,
    "completion_tokens": 1500,
    "total_tokens": 3548,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 1216, "audio_tokens": 0},
}

DEEPSEEK_USAGE = {
    "prompt_tokens": 64,
    "completion_tokens": 420,
    "total_tokens": 484,
    "prompt_tokens_details": {"cached_tokens": 0},
    "prompt_cache_hit_tokens": 0,
    "prompt_cache_miss_tokens": 64,
    "completion_tokens_details": {"reasoning_tokens": 380},
}

LEGACY_COMPLETION: dict[str, Any] = {
    "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
    "object": "text_completion",
    "created": 1589478378,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [
        {
            "text": "\n\nThis is indeed a test",
            "index": 0,
            "logprobs": None,
            "finish_reason": "length",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}

EMBEDDINGS_RESPONSE: dict[str, Any] = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.0023064255, -0.009327292]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}

RESPONSES_API_USAGE = {
    "input_tokens": 328,
    "input_tokens_details": {"cached_tokens": 256},
    "output_tokens": 52,
    "output_tokens_details": {"reasoning_tokens": 20},
    "total_tokens": 380,
}

ANTHROPIC_MESSAGE: dict[str, Any] = orjson.loads(
    b"""{
  "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-20250514",
  "content": [
    {"type": "thinking", "thinking": "The user wants the weather.",
     "signature": "EqQBCgIYAhIM1gbcDa9G"},
    {"type": "text", "text": "I'll check the weather in San Francisco."},
    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
     "input": {"location": "San Francisco, CA", "unit": "celsius"}}
  ],
  "stop_reason": "tool_use",
  "stop_sequence": null,
  "usage": {
    "input_tokens": 2095,
    "cache_creation_input_tokens": 1500,
    "cache_read_input_tokens": 3000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 503,
    "service_tier": "standard"
  }
}"""
)

OPENAI_STREAM = b"""\
data: {"id":"chatcmpl-AVJ2y5","object":"chat.completion.chunk","created":1732000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-AVJ2y5","object":"chat.completion.chunk","created":1732000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-AVJ2y5","object":"chat.completion.chunk","created":1732000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{"content":" there!"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-AVJ2y5","object":"chat.completion.chunk","created":1732000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}

data: {"id":"chatcmpl-AVJ2y5","object":"chat.completion.chunk","created":1732000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":3,"total_tokens":22,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}

data: [DONE]

"""  # noqa: E501

OPENAI_TOOL_STREAM = b"""\
data: {"id":"chatcmpl-AVJ3k1","object":"chat.completion.chunk","created":1732000001,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_DdmO9pD3xa9XTPNJ32zg2hcA","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-AVJ3k1","object":"chat.completion.chunk","created":1732000001,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"location\\":"}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-AVJ3k1","object":"chat.completion.chunk","created":1732000001,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"Paris\\"}"}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-AVJ3k1","object":"chat.completion.chunk","created":1732000001,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}

data: [DONE]

"""  # noqa: E501

GLM_STREAM = b"""\
data: {"id":"20251010160000a1b2c3","created":1760083200,"object":"chat.completion.chunk","model":"glm-4.6","choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"The user"}}]}

data: {"id":"20251010160000a1b2c3","created":1760083200,"object":"chat.completion.chunk","model":"glm-4.6","choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":" says hi."}}]}

data: {"id":"20251010160000a1b2c3","created":1760083200,"object":"chat.completion.chunk","model":"glm-4.6","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi!"}}]}

data: {"id":"20251010160000a1b2c3","created":1760083200,"object":"chat.completion.chunk","model":"glm-4.6","choices":[{"index":0,"finish_reason":"stop","delta":{"role":"assistant","content":""}}],"usage":{"prompt_tokens":9,"completion_tokens":14,"total_tokens":23,"prompt_tokens_details":{"cached_tokens":0}}}

data: [DONE]

"""  # noqa: E501

LEGACY_STREAM = b"""\
data: {"id":"cmpl-8","object":"text_completion","created":1700000000,"choices":[{"text":"This","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}

data: {"id":"cmpl-8","object":"text_completion","created":1700000000,"choices":[{"text":" is a test","index":0,"logprobs":null,"finish_reason":"length"}],"model":"gpt-3.5-turbo-instruct"}

data: [DONE]

"""  # noqa: E501

ANTHROPIC_STREAM = b"""\
event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":100,"cache_read_input_tokens":2048,"output_tokens":2}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Weather needs a tool."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Let me check."}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\": \\"San Fra"}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"ncisco, CA\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""  # noqa: E501

# Z.ai's Anthropic endpoint reports input only at the end, in message_delta.
ZAI_ANTHROPIC_STREAM = b"""\
event: message_start
data: {"type":"message_start","message":{"id":"msg_20251010","type":"message","role":"assistant","model":"glm-4.6","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":0,"output_tokens":0}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello!"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":1234,"output_tokens":56,"cache_read_input_tokens":1024}}

event: message_stop
data: {"type":"message_stop"}

"""  # noqa: E501


def run_stream(
    account: OpenAIStreamAccount | AnthropicStreamAccount, stream: bytes, chunk_size: int = 37
) -> None:
    """Feed an SSE stream through the splitter into an accountant, in awkward chunks."""
    splitter = SSESplitter()
    for i in range(0, len(stream), chunk_size):
        for event in splitter.feed(stream[i : i + chunk_size]):
            data = event_data(event)
            if data is not None and data != b"[DONE]":
                account.feed(orjson.loads(data))
    assert splitter.pending == b""


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        (OPENAI_TOOL_CALL_RESPONSE, Usage(input=1117, output=46, cache_read=1024)),
        (GLM_RESPONSE, Usage(input=12, output=58, cache_read=4)),
        ({"usage": O3_RESPONSE_USAGE}, Usage(2048, 1500, cache_read=1920, reasoning=1216)),
        ({"usage": DEEPSEEK_USAGE}, Usage(input=64, output=420, reasoning=380)),
        (
            {
                "usage": {
                    **DEEPSEEK_USAGE,
                    "prompt_cache_hit_tokens": 48,
                    "prompt_tokens_details": None,
                }
            },
            Usage(input=64, output=420, cache_read=48, reasoning=380),
        ),
        (LEGACY_COMPLETION, Usage(input=5, output=7)),
        (EMBEDDINGS_RESPONSE, Usage(input=8)),
        ({"usage": RESPONSES_API_USAGE}, Usage(328, 52, cache_read=256, reasoning=20)),
        ({"usage": {"prompt_tokens": 0, "completion_tokens": 0}}, Usage()),
        ({"usage": {"prompt_tokens": 10, "completion_tokens": None}}, Usage(input=10)),
        ({"usage": {"prompt_tokens": -5, "completion_tokens": 3}}, Usage(output=3)),
        ({"usage": {"prompt_tokens": 10**12, "completion_tokens": 3}}, Usage(output=3)),
        ({"usage": {"prompt_tokens": "12", "completion_tokens": 3.0, "total_tokens": 15}}, None),
        ({"usage": {"prompt_tokens": True, "completion_tokens": 2}}, Usage(output=2)),
        (
            {"usage": {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}},
            Usage(input=5, cache_read=5),
        ),
        ({"usage": None}, None),
        ({"usage": {}}, None),
        ({"usage": {"total_tokens": 10}}, None),
        ({"choices": []}, None),
        ([{"usage": {"prompt_tokens": 1}}], None),
        ("usage", None),
        (None, None),
    ],
)
def test_openai_usage_reads_prompt_and_completion_counts(body: object, usage: Usage | None) -> None:
    assert openai_usage(body) == usage


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        (ANTHROPIC_MESSAGE, Usage(input=6595, output=503, cache_read=3000, cache_write=1500)),
        ({"usage": {"input_tokens": 25, "output_tokens": 10}}, Usage(input=25, output=10)),
        (
            {"usage": {"input_tokens": 3, "cache_read_input_tokens": None, "output_tokens": 1}},
            Usage(input=3, output=1),
        ),
        (
            {"usage": {"input_tokens": 3, "cache_creation_input_tokens": -1, "output_tokens": 1}},
            Usage(input=3, output=1),
        ),
        ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, None),
        ({"usage": {"cache_read_input_tokens": 7}}, None),
        ({"usage": []}, None),
        (17, None),
    ],
)
def test_anthropic_usage_adds_cache_reads_and_writes_into_input(
    body: object, usage: Usage | None
) -> None:
    assert anthropic_usage(body) == usage


@pytest.mark.parametrize(
    ("stream", "usage", "text"),
    [
        (OPENAI_STREAM, Usage(input=19, output=3), "Hello there!"),
        (OPENAI_TOOL_STREAM, None, 'get_weather\n{"location":"Paris"}'),
        (GLM_STREAM, Usage(input=9, output=14), "The user says hi.\nHi!"),
        (LEGACY_STREAM, None, "This is a test"),
    ],
)
def test_openai_stream_account_collects_usage_and_output_text(
    stream: bytes, usage: Usage | None, text: str
) -> None:
    account = OpenAIStreamAccount()
    run_stream(account, stream)
    assert account.usage == usage
    assert account.output_text() == text
    assert account.overflow_chars == 0


def test_openai_stream_account_keeps_the_largest_cumulative_usage_seen() -> None:
    account = OpenAIStreamAccount()
    account.feed({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1}})
    account.feed({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}})
    account.feed({"choices": [], "usage": None})
    assert account.usage == Usage(input=9, output=5)


@pytest.mark.parametrize(
    ("stream", "usage", "text"),
    [
        (
            ANTHROPIC_STREAM,
            Usage(input=2620, output=89, cache_read=2048, cache_write=100),
            'Weather needs a tool.\nLet me check.\nget_weather\n{"location": "San Francisco, CA"}',
        ),
        (ZAI_ANTHROPIC_STREAM, Usage(input=2258, output=56, cache_read=1024), "Hello!"),
    ],
)
def test_anthropic_stream_account_collects_usage_and_output_text(
    stream: bytes, usage: Usage, text: str
) -> None:
    account = AnthropicStreamAccount()
    run_stream(account, stream)
    assert account.usage == usage
    assert account.output_text() == text


def test_anthropic_stream_account_takes_the_last_output_count_and_the_largest_input() -> None:
    account = AnthropicStreamAccount()
    assert account.usage is None
    account.feed(
        {"type": "message_start", "message": {"usage": {"input_tokens": 50, "output_tokens": 1}}}
    )
    assert account.usage == Usage(input=50, output=1)
    account.feed({"type": "message_delta", "usage": {"output_tokens": 30}})
    account.feed({"type": "message_delta", "usage": {"input_tokens": 40, "output_tokens": 20}})
    assert account.usage == Usage(input=50, output=20)


def test_anthropic_stream_account_ignores_events_without_usage() -> None:
    account = AnthropicStreamAccount()
    for event in (
        {"type": "ping"},
        {"type": "message_start", "message": {"usage": None}},
        {"type": "message_delta", "usage": {"output_tokens": "many"}},
        {"type": "error", "error": {"type": "overloaded_error"}},
    ):
        account.feed(event)
    assert account.usage is None


@pytest.mark.parametrize("account_type", [OpenAIStreamAccount, AnthropicStreamAccount])
def test_stream_accounts_keep_a_bounded_text_on_a_100_mb_stream(
    account_type: type[OpenAIStreamAccount | AnthropicStreamAccount],
) -> None:
    piece = "lorem ipsum " * 417
    if account_type is OpenAIStreamAccount:
        event: dict[str, Any] = {"choices": [{"index": 0, "delta": {"content": piece}}]}
    else:
        event = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": piece},
        }
    account = account_type(max_text_chars=262_144)
    feeds = 100_000_000 // len(piece)
    for _ in range(feeds):
        account.feed(event)
    text = account.output_text()
    assert len(text) == 262_144
    assert text == (piece * (262_144 // len(piece) + 1))[:262_144]
    assert account.overflow_chars == feeds * len(piece) - 262_144


def test_a_piece_that_straddles_the_limit_is_cut_and_the_rest_counted() -> None:
    account = OpenAIStreamAccount(max_text_chars=5)
    for content in ("abc", "defg", "hi"):
        account.feed({"choices": [{"delta": {"content": content}}]})
    assert account.output_text() == "abcde"
    assert account.overflow_chars == 4


def test_a_negative_text_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_text_chars"):
        OpenAIStreamAccount(max_text_chars=-1)


def _simulated(dialect: str, calls: int, chunks: int, text: str) -> tuple[object, bytes]:
    """The simulator's non-streamed answer and its stream for the same reply."""
    tools = [
        {"name": f"tool_{n}", "input_schema": {"properties": {"q": {}, "n": {"type": "integer"}}}}
        for n in range(calls)
    ]
    if dialect == "openai":
        request = {"tools": [{"type": "function", "function": {"name": t["name"],
                   "parameters": t["input_schema"]}} for t in tools]}  # fmt: skip
    else:
        request = {"tools": tools}
    made = tool_calls(dialect, request, count=calls)  # type: ignore[arg-type]
    pieces = split_text(text, chunks)
    if dialect == "openai":
        body = orjson.loads(sim_openai.completion("chatcmpl-sim1", 0, "m", text, None, made))
        stream = sim_openai.ChunkStream(PLAIN, "chatcmpl-sim1", 0, "m", include_usage=False)
        events = stream.tool_events(made, chunks, None) if made else stream.events(pieces, None)
    else:
        body = orjson.loads(sim_anthropic.message("msg_sim1", "m", text, None, made))
        flow = sim_anthropic.EventStream(PLAIN, "msg_sim1", "m")
        events = flow.tool_events(made, chunks, None) if made else flow.events(pieces, None)
    return body, b"".join(events)


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize(("calls", "chunks"), [(0, 1), (0, 7), (1, 1), (1, 9), (3, 4)])
def test_a_streamed_answer_has_the_text_of_its_non_streamed_form(
    dialect: str, calls: int, chunks: int
) -> None:
    body, stream = _simulated(dialect, calls, chunks, "Some words to say.")
    account = OpenAIStreamAccount() if dialect == "openai" else AnthropicStreamAccount()
    run_stream(account, stream, chunk_size=23)
    whole = openai_output_text(body) if dialect == "openai" else anthropic_output_text(body)
    assert account.output_text() == whole
    if calls:
        assert whole.count("tool_") == calls and '"q":' in whole


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (OPENAI_TOOL_CALL_RESPONSE, 'get_weather\n{"location":"Paris, France"}'),
        (
            GLM_RESPONSE,
            "The user greets me. I should greet back.\nHello! How can I help you today?",
        ),
        (LEGACY_COMPLETION, "\n\nThis is indeed a test"),
        (
            {
                "choices": [
                    {
                        "message": {
                            "content": [
                                {"type": "text", "text": "a"},
                                {"type": "text", "text": "b"},
                            ]
                        }
                    }
                ]
            },
            "a\nb",
        ),
        (
            {"choices": [{"message": {"content": None, "refusal": "I can't help with that."}}]},
            "I can't help with that.",
        ),
        ({"choices": "nope"}, ""),
        (None, ""),
    ],
)
def test_openai_output_text_covers_content_reasoning_and_tool_arguments(
    body: object, text: str
) -> None:
    assert openai_output_text(body) == text


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (
            ANTHROPIC_MESSAGE,
            "The user wants the weather.\nI'll check the weather in San Francisco.\n"
            'get_weather\n{"location":"San Francisco, CA","unit":"celsius"}',
        ),
        ({"content": [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"}]}, ""),
        ({"content": "not a list"}, ""),
        ({}, ""),
    ],
)
def test_anthropic_output_text_covers_text_thinking_and_tool_input(body: object, text: str) -> None:
    assert anthropic_output_text(body) == text


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    ("body", "text", "messages"),
    [
        (
            {
                "model": "glm-4.6",
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Weather?"},
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,AAAA"},
                            },
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {
                                    "name": "get_weather",
                                    "arguments": '{"location":"Paris"}',
                                },
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                ],
                "tools": [WEATHER_TOOL],
            },
            'You are terse.\nWeather?\nget_weather\n{"location":"Paris"}\n18C\n'
            + orjson.dumps([WEATHER_TOOL]).decode(),
            4,
        ),
        (
            {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"},
            "Say this is a test",
            0,
        ),
        ({"prompt": ["one", "two", [1, 2, 3]]}, "one\ntwo", 0),
        ({"model": "text-embedding-3-small", "input": ["alpha", "beta"]}, "alpha\nbeta", 0),
        ({"input": "just one"}, "just one", 0),
        (
            {
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
                "instructions": "Be brief.",
            },
            "Be brief.\nhi",
            0,
        ),
        (
            {
                "messages": [],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {}},
                },
            },
            '{"name":"x","schema":{}}',
            0,
        ),
        ({"messages": ["not a message", {"role": "user", "content": "ok"}]}, "ok", 1),
        ([1, 2], "", 0),
    ],
)
def test_openai_request_text_has_messages_tools_prompts_and_inputs(
    body: object, text: str, messages: int
) -> None:
    assert request_text("openai", body) == (text, messages)


ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
}


@pytest.mark.parametrize(
    ("dialect", "body", "tokens"),
    [
        ("openai", {"input": [101, 7, 2023]}, 3),
        ("openai", {"input": [[1, 2], [3], [4, 5, 6]]}, 6),
        ("openai", {"input": ["text", [1, 2]]}, 2),
        ("openai", {"prompt": [[9, 9], [9]]}, 3),
        ("openai", {"input": "text only"}, 0),
        ("openai", {"input": [1, "x"]}, 0),
        ("openai", {"input": [True, False]}, 0),
        ("openai", {"input": []}, 0),
        ("anthropic", {"input": [1, 2]}, 0),
        ("openai", [1, 2], 0),
    ],
)
def test_token_ids_in_a_request_are_counted_exactly(
    dialect: Any, body: object, tokens: int
) -> None:
    assert request_token_ids(dialect, body) == tokens


@pytest.mark.parametrize(
    ("body", "text", "messages"),
    [
        (
            {
                "model": "claude-sonnet-4-20250514",
                "system": [
                    {
                        "type": "text",
                        "text": "You are terse.",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "thinking", "thinking": "Use the tool.", "signature": "sig"},
                            {
                                "type": "tool_use",
                                "id": "toolu_1",
                                "name": "get_weather",
                                "input": {"location": "Paris"},
                            },
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "toolu_1",
                                "content": [{"type": "text", "text": "18C"}],
                            },
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "AAAA",
                                },
                            },
                            {
                                "type": "document",
                                "source": {
                                    "type": "text",
                                    "media_type": "text/plain",
                                    "data": "notes",
                                },
                            },
                        ],
                    },
                ],
                "tools": [ANTHROPIC_TOOL],
            },
            "You are terse.\nWeather in Paris?\nUse the tool.\nget_weather\n"
            '{"location":"Paris"}\n18C\nnotes\n' + orjson.dumps([ANTHROPIC_TOOL]).decode(),
            4,
        ),
        (
            {"system": "Be brief.", "messages": [{"role": "user", "content": "hi"}]},
            "Be brief.\nhi",
            2,
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "content": "plain"}]}
                ]
            },
            "plain",
            1,
        ),
        ({"messages": None}, "", 0),
    ],
)
def test_anthropic_request_text_has_system_messages_and_tools(
    body: object, text: str, messages: int
) -> None:
    assert request_text("anthropic", body) == (text, messages)


@pytest.mark.parametrize(
    ("body", "info"),
    [
        (
            b'{"model":"glm-4.6","stream":true,"stream_options":{"include_usage":true},"messages":[]}',
            RequestInfo("glm-4.6", True, True, {}),
        ),
        (b'{"model":"glm-4.6","messages":[]}', RequestInfo("glm-4.6", False, False, {})),
        (b'{"model":42,"stream":"true"}', RequestInfo(None, False, False, {})),
        (
            b'{"stream":1,"stream_options":{"include_usage":"yes"}}',
            RequestInfo(None, False, False, {}),
        ),
        (b'{"stream":true,"stream_options":null}', RequestInfo(None, True, False, {})),
        (b"[1,2]", None),
        (b"not json", None),
        (b"", None),
        (b'{"model": "x"', None),
    ],
)
def test_request_fields_reads_model_stream_and_include_usage_literally(
    body: bytes, info: RequestInfo | None
) -> None:
    parsed = request_fields(body)
    if info is None:
        assert parsed is None
        return
    assert parsed is not None
    assert (parsed.model, parsed.stream, parsed.include_usage) == (
        info.model,
        info.stream,
        info.include_usage,
    )
    assert parsed.parsed == orjson.loads(body)


KEYS = [
    "usage",
    "choices",
    "delta",
    "message",
    "content",
    "text",
    "reasoning_content",
    "tool_calls",
    "function",
    "arguments",
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "cached_tokens",
    "completion_tokens_details",
    "reasoning_tokens",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "type",
    "message_start",
    "message_delta",
    "content_block_delta",
    "content_block_start",
    "content_block",
    "thinking",
    "partial_json",
    "tool_use",
    "tool_result",
    "input",
    "name",
    "system",
    "messages",
    "tools",
    "prompt",
    "text_delta",
    "stream_options",
    "include_usage",
]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(KEYS)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), children, max_size=5)
    ),
    max_leaves=40,
)


def assert_sane(usage: Usage | None) -> None:
    if usage is None:
        return
    for value in (usage.input, usage.output, usage.cache_read, usage.cache_write, usage.reasoning):
        assert type(value) is int
        assert 0 <= value < 3 * 10**9
    assert usage.cache_read + usage.cache_write <= usage.input
    assert usage.reasoning <= usage.output


@settings(max_examples=500, deadline=None)
@given(value=json_values)
def test_nothing_raises_on_any_json_value_and_counts_stay_sane(value: object) -> None:
    assert_sane(openai_usage(value))
    assert_sane(anthropic_usage(value))
    assert_sane(openai_usage({"usage": value}))
    assert_sane(anthropic_usage({"usage": value}))
    assert isinstance(openai_output_text(value), str)
    assert isinstance(anthropic_output_text(value), str)
    for dialect in ("openai", "anthropic"):
        text, messages = request_text(dialect, value)
        assert isinstance(text, str)
        assert messages >= 0
    for account in (
        OpenAIStreamAccount(max_text_chars=16),
        AnthropicStreamAccount(max_text_chars=16),
    ):
        account.feed(value)
        account.feed({"type": "message_delta", "usage": value, "choices": [{"delta": value}]})
        assert_sane(account.usage)
        assert len(account.output_text()) <= 16


def test_deeply_nested_values_do_not_raise() -> None:
    deep: object = {"location": "x"}
    for _ in range(400):
        deep = {"input": deep, "content": [deep]}
    block = {"type": "tool_use", "name": "t", "input": deep}
    assert anthropic_output_text({"content": [block]}) == "t"
    assert request_text("anthropic", {"messages": [{"role": "user", "content": [block]}]}) == (
        "t",
        1,
    )
    assert request_text(
        "openai", {"messages": [{"role": "user", "content": "x"}], "tools": [deep]}
    ) == ("x", 1)


@pytest.mark.parametrize(
    ("dialect", "tail", "usage"),
    [
        ("openai", b'0.1,0.2]}],"model":"e","usage":{"prompt_tokens":8,"total_tokens":8}}',
         Usage(input=8)),
        ("openai", b'"usage": {"prompt_tokens": 5, "completion_tokens": 2,\n'
                   b' "prompt_tokens_details": {"cached_tokens": 1}}\n}\n',
         Usage(input=5, output=2, cache_read=1)),
        ("anthropic", b'"}],"usage":{"input_tokens":3,"cache_read_input_tokens":4,'
                      b'"output_tokens":9}}', Usage(input=7, output=9, cache_read=4)),
        # A later mention inside a string is escaped, so the answer's own key is found.
        ("openai", b'"usage":{"prompt_tokens":1},"x":"say \\"usage\\": {}"}', Usage(input=1)),
        ("openai", b'"usage":{"prompt_tokens":1,"s":"}{"}}', Usage(input=1)),
        ("openai", b'"usage":{"prompt_tokens":', None),
        ("openai", b'"usage":null}', None),
        ("openai", b'"usage" "x" {"prompt_tokens":1}', None),
        ("openai", b'"usage":{"prompt_tokens":1,]}', None),
        ("openai", b"no usage here", None),
        ("openai", b"", None),
    ],
)  # fmt: skip
def test_usage_is_read_from_the_tail_of_an_answer_too_large_to_parse(
    dialect: Any, tail: bytes, usage: Usage | None
) -> None:
    assert tail_usage(dialect, tail) == usage


@given(st.binary(max_size=200))
def test_any_tail_reads_as_usage_or_none_without_raising(tail: bytes) -> None:
    found = tail_usage("openai", b'"usage":{' + tail)
    assert found is None or isinstance(found, Usage)
