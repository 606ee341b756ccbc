"""Tool calls: when the simulated model calls a tool, and how each dialect carries the call."""

import json
import math

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zai_proxy.simulator.tools import ToolCall, example, output_tokens, tool_calls

from .wire import json_events, parse_sse

CHAT = "/api/paas/v4/chat/completions"
MESSAGES = "/api/anthropic/v1/messages"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 3, "maximum": 10},
    },
    "required": ["city"],
}
TIME = {"type": "object", "properties": {"zone": {"type": "string"}}}
ARGUMENTS = '{"city":"sim city","unit":"celsius","days":3}'
TIME_ARGUMENTS = '{"zone":"sim zone"}'
# The documented default: one output token per 4 characters of each call's name and arguments.
ONE_CALL = math.ceil(len("get_weather" + ARGUMENTS) / 4)
TWO_CALLS = ONE_CALL + math.ceil(len("get_time" + TIME_ARGUMENTS) / 4)
OPENAI_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
ANTHROPIC_TOOLS = [
    {"name": "get_weather", "description": "Weather", "input_schema": WEATHER},
    {"name": "get_time", "input_schema": TIME},
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def openai_request(**extra: object) -> dict:
    return {"model": "glm-4.6", "messages": ASK, "tools": OPENAI_TOOLS, **extra}


def anthropic_request(**extra: object) -> dict:
    return {"model": "glm-4.6", "max_tokens": 100, "messages": ASK, "tools": ANTHROPIC_TOOLS,
            **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "string"}, "sim value"),
        ({"type": "integer"}, 1),
        ({"type": "integer", "minimum": 5}, 5),
        ({"type": "number", "maximum": 0.5}, 0.5),
        ({"type": "boolean"}, True),
        ({"type": "null"}, None),
        ({"type": ["null", "integer"]}, 1),
        ({"enum": ["b", "a"]}, "b"),
        ({"const": 42}, 42),
        ({"anyOf": [{"type": "boolean"}, {"type": "string"}]}, True),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, [1, 1]),
        ({"type": "array"}, ["sim value"]),
        ({"properties": {"q": {"type": "string"}}}, {"q": "sim q"}),
        ({"type": "object"}, {}),
        ({}, "sim value"),
        ("not a schema", None),
    ],
)
def test_an_example_value_fits_its_schema(schema: object, value: object) -> None:
    assert example(schema) == value


def test_a_self_nesting_schema_ends_at_the_depth_bound() -> None:
    schema: dict = {"type": "object", "properties": {}}
    schema["properties"]["child"] = schema
    value = example(schema)
    depth = 0
    while isinstance(value, dict):
        value, depth = value["child"], depth + 1
    assert value is None and depth < 20


@pytest.mark.parametrize(
    ("request_fields", "names"),
    [
        ({}, ["get_weather"]),
        ({"tool_choice": "auto"}, ["get_weather"]),
        ({"tool_choice": "none"}, []),
        ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, ["get_time"]),
        ({"tool_choice": {"type": "function", "function": {"name": "missing"}}}, []),
        ({"tools": []}, []),
        ({"tools": [{"type": "retrieval"}, "junk"]}, []),
        ({"messages": [*ASK, {"role": "tool", "tool_call_id": "c", "content": "sunny"}]}, []),
        (
            {
                "messages": [*ASK, {"role": "tool", "tool_call_id": "c", "content": "x"}],
                "tool_choice": "required",
            },
            ["get_weather"],
        ),
    ],
)
def test_openai_requests_call_tools_by_the_rule(request_fields: dict, names: list[str]) -> None:
    calls = tool_calls("openai", openai_request(**request_fields))
    assert [call.name for call in calls] == names


@pytest.mark.parametrize(
    ("request_fields", "names"),
    [
        ({}, ["get_weather"]),
        ({"tool_choice": {"type": "none"}}, []),
        ({"tool_choice": {"type": "tool", "name": "get_time"}}, ["get_time"]),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, []),
        (
            {
                "messages": [
                    *ASK,
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
                ]
            },
            [],
        ),
        (
            {
                "messages": [*ASK, {"role": "user", "content": [{"type": "tool_result"}]}],
                "tool_choice": {"type": "any"},
            },
            ["get_weather"],
        ),
    ],
)
def test_anthropic_requests_call_tools_by_the_rule(request_fields: dict, names: list[str]) -> None:
    calls = tool_calls("anthropic", anthropic_request(**request_fields))
    assert [call.name for call in calls] == names


def test_more_calls_take_the_tools_in_order_and_count_their_characters() -> None:
    calls = tool_calls("openai", openai_request(), count=5)
    assert calls == [
        ToolCall("get_weather", ARGUMENTS),
        ToolCall("get_time", TIME_ARGUMENTS),
    ]
    assert output_tokens(calls) == TWO_CALLS


def test_an_openai_tool_call_answer_carries_tool_calls_and_no_text(client: httpx.Client) -> None:
    answer = client.post(CHAT, json=openai_request()).json()
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": ARGUMENTS}
    assert answer["usage"]["completion_tokens"] == output_tokens(
        [ToolCall("get_weather", ARGUMENTS)]
    )


def test_after_the_tool_result_the_model_answers_in_text(client: httpx.Client) -> None:
    messages = [
        *ASK,
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
         "function": {"name": "get_weather", "arguments": ARGUMENTS}}]},
        {"role": "tool", "tool_call_id": "c", "content": "sunny"},
    ]  # fmt: skip
    answer = client.post(CHAT, json=openai_request(messages=messages)).json()
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["choices"][0]["message"]["content"]


@pytest.mark.parametrize("chunks", [1, 5, 200])
def test_an_openai_stream_carries_each_call_as_delta_tool_calls(
    client: httpx.Client, chunks: int
) -> None:
    request = openai_request(stream=True, stream_options={"include_usage": True})
    headers = {"x-sim-tool-calls": "2", "x-sim-chunks": str(chunks)}
    events = json_events(client.post(CHAT, json=request, headers=headers).text)
    assert events[-1] == "[DONE]"
    *deltas, finish, usage = events[:-1]
    assert deltas[0]["choices"][0]["delta"]["role"] == "assistant"
    calls: dict[int, dict] = {}
    for chunk in deltas:
        [fragment] = chunk["choices"][0]["delta"]["tool_calls"]
        index = fragment["index"]
        if "id" in fragment:
            assert index not in calls
            calls[index] = {"id": fragment["id"], "name": fragment["function"]["name"], "args": ""}
        calls[index]["args"] += fragment["function"]["arguments"]
    assert [(c["name"], json.loads(c["args"])) for c in calls.values()] == [
        ("get_weather", json.loads(ARGUMENTS)),
        ("get_time", json.loads(TIME_ARGUMENTS)),
    ]
    assert len({c["id"] for c in calls.values()}) == 2
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    plain = client.post(CHAT, json=openai_request(), headers=headers).json()
    assert usage["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"] == TWO_CALLS


def test_an_anthropic_tool_use_answer_has_tool_use_blocks(client: httpx.Client) -> None:
    answer = client.post(MESSAGES, json=anthropic_request()).json()
    assert answer["stop_reason"] == "tool_use"
    [block] = answer["content"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert (block["name"], block["input"]) == ("get_weather", json.loads(ARGUMENTS))
    assert answer["usage"]["output_tokens"] == ONE_CALL


@pytest.mark.parametrize("chunks", [1, 5, 200])
def test_an_anthropic_stream_carries_input_json_deltas_per_block(
    client: httpx.Client, chunks: int
) -> None:
    headers = {"x-sim-tool-calls": "2", "x-sim-chunks": str(chunks)}
    text = client.post(MESSAGES, json=anthropic_request(stream=True), headers=headers).text
    events = [(name, json.loads(data)) for name, data in parse_sse(text)]
    assert all(name == data["type"] for name, data in events)
    blocks: dict[int, dict] = {}
    for name, data in events:
        if name == "content_block_start":
            block = data["content_block"]
            assert block["type"] == "tool_use" and block["input"] == {}
            blocks[data["index"]] = {**block, "json": "", "stopped": False}
        elif name == "content_block_delta":
            assert data["delta"]["type"] == "input_json_delta"
            assert not blocks[data["index"]]["stopped"]
            blocks[data["index"]]["json"] += data["delta"]["partial_json"]
        elif name == "content_block_stop":
            blocks[data["index"]]["stopped"] = True
    assert [(b["name"], json.loads(b["json"]), b["stopped"]) for b in blocks.values()] == [
        ("get_weather", json.loads(ARGUMENTS), True),
        ("get_time", {"zone": "sim zone"}, True),
    ]
    assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] == TWO_CALLS


def test_exact_usage_headers_still_win_over_the_tool_count(client: httpx.Client) -> None:
    answer = client.post(MESSAGES, json=anthropic_request(),
                         headers={"x-sim-completion-tokens": "9"}).json()  # fmt: skip
    assert answer["usage"]["output_tokens"] == 9


# What orjson can parse a request body into (it reads a larger integer as a float).
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
SCHEMA_KEYS = st.sampled_from(
    ["type", "properties", "items", "enum", "const", "anyOf", "oneOf", "minimum", "maximum",
     "minItems"]
)  # fmt: skip
SCHEMAS = st.recursive(
    st.dictionaries(SCHEMA_KEYS, JSON, max_size=4),
    lambda inner: st.dictionaries(
        SCHEMA_KEYS, inner | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_size=4
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(schema=SCHEMAS | JSON, choice=JSON)
def test_any_schema_or_tool_choice_gives_json_object_arguments_or_no_call(
    schema: object, choice: object
) -> None:
    for dialect, tool in (
        ("openai", {"type": "function", "function": {"name": "t", "parameters": schema}}),
        ("anthropic", {"name": "t", "input_schema": schema}),
    ):
        request = {"messages": ASK, "tools": [tool], "tool_choice": choice}
        for call in tool_calls(dialect, request):  # type: ignore[arg-type]
            assert call.name == "t"
            assert isinstance(json.loads(call.arguments), dict)
