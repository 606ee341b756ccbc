"""The official OpenAI and Anthropic Python SDKs against `zai-proxy up`, the simulator upstream.

Every call goes through the SDK as an application would make it and must parse into the
SDK's types. Around each test the proxy's token counters (its /metrics, read with
prometheus_client's parser) must grow by exactly the usage the SDK saw, plus, for an
OpenAI stream whose client did not ask for usage, the usage the proxy asked for on its
behalf and took out of the stream. That usage is learned from the upstream itself: the
simulator's record of the request the proxy sent (`/_sim/requests/<x-request-id>`) is
sent to it again, directly, and its usage chunk read.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import anthropic
import httpx
import openai
import pytest

from tests.support import ServiceProcess, launch_stack, scrape, wait_until
from zai_proxy.simulator.process import SimulatorProcess, start_simulator

T = TypeVar("T")
MODEL = "glm-4.6"
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city"],
}
OPENAI_TOOLS: list = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER_SCHEMA},
    }
]
ANTHROPIC_TOOLS: list = [
    {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}
]


@dataclass
class Tokens:
    """Input and output tokens, as the proxy counts them."""

    input: int = 0
    output: int = 0

    def add(self, input: int, output: int) -> None:
        self.input += input
        self.output += output


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    with start_simulator() as sim:
        yield sim


@pytest.fixture(scope="module")
def stack(simulator: SimulatorProcess) -> Iterator[ServiceProcess]:
    service = launch_stack(simulator.url)
    try:
        yield service
    finally:
        service.stop(timeout=20)
    assert "Traceback" not in service.log()


@pytest.fixture(scope="module")
def oai(stack: ServiceProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="sk-client", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def claude(stack: ServiceProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=stack.url, api_key="sk-client", max_retries=0) as client:
        yield client


def counted(stack: ServiceProcess) -> tuple[float, float, float]:
    """The proxy's input and output token totals, and how many of all tokens were estimated."""
    metrics = scrape(stack.url)
    estimated = metrics.value("proxy_token_input_total", source="estimate") + metrics.value(
        "proxy_token_output_total", source="estimate"
    )
    return (
        metrics.value("proxy_token_input_total"),
        metrics.value("proxy_token_output_total"),
        estimated,
    )


@pytest.fixture
def seen(stack: ServiceProcess) -> Iterator[Tokens]:
    """The usage a test's SDK calls saw; the proxy's counters must grow by exactly that."""
    before = counted(stack)
    tokens = Tokens()
    yield tokens
    expected = (before[0] + tokens.input, before[1] + tokens.output, before[2])
    # The proxy counts an exchange just after its last byte went out: give it a moment.
    try:
        wait_until(lambda: counted(stack) == expected, timeout=5)
    except AssertionError:
        raise AssertionError(
            f"proxy counted (input, output, estimated) {counted(stack)}, the SDKs saw {expected}"
        ) from None


def injected_usage(simulator: SimulatorProcess, request_id: str) -> tuple[int, int]:
    """The usage the upstream reported for the request the proxy sent under this id: its
    record is sent again, directly, and the stream's usage chunk read."""
    record = httpx.get(f"{simulator.url}/_sim/requests/{request_id}").json()
    body = json.loads(base64.b64decode(record["body_b64"]))
    assert body["stream_options"]["include_usage"] is True  # the proxy asked for it
    headers = {name: value for name, value in record["headers"] if name.startswith("x-sim-")}
    with openai.OpenAI(base_url=f"{simulator.url}/api/paas/v4", api_key="x") as direct:
        chunks = list(direct.chat.completions.create(**body, extra_headers=headers))
    usage = chunks[-1].usage
    assert usage is not None
    return usage.prompt_tokens, usage.completion_tokens


def new_id() -> str:
    return uuid.uuid4().hex


def valid(obj: T) -> T:
    """`obj`, after checking that its fields pass the SDK type's own validation: the SDKs
    build responses without validating them, so a missing or mistyped field would not fail."""
    type(obj).model_validate(obj.to_dict())  # type: ignore[attr-defined]
    return obj


# OpenAI ----------------------------------------------------------------------------------


def test_openai_chat_completion_parses_and_is_counted(oai: openai.OpenAI, seen: Tokens) -> None:
    completion = valid(oai.chat.completions.create(model=MODEL, messages=ASK))
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert completion.usage is not None
    seen.add(completion.usage.prompt_tokens, completion.usage.completion_tokens)


def test_openai_stream_with_include_usage_ends_in_the_usage_the_proxy_counts(
    oai: openai.OpenAI, seen: Tokens
) -> None:
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=ASK,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [valid(chunk) for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    seen.add(usage.prompt_tokens, usage.completion_tokens)


def test_openai_stream_without_include_usage_shows_none_and_is_counted_from_the_upstream(
    oai: openai.OpenAI, simulator: SimulatorProcess, seen: Tokens
) -> None:
    request_id = new_id()
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=ASK,
        stream=True,
        extra_headers={"x-request-id": request_id},
    )
    chunks = [valid(chunk) for chunk in stream]
    assert chunks and all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    seen.add(*injected_usage(simulator, request_id))


def test_openai_tool_calls_parse_with_json_arguments(oai: openai.OpenAI, seen: Tokens) -> None:
    completion = valid(oai.chat.completions.create(model=MODEL, messages=ASK, tools=OPENAI_TOOLS))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "unit", "days"} and 1 <= arguments["days"] <= 7
    assert completion.usage is not None
    seen.add(completion.usage.prompt_tokens, completion.usage.completion_tokens)

    # The tool's result goes back; the model answers in text.
    conversation: list[Any] = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    answer = valid(
        oai.chat.completions.create(model=MODEL, messages=conversation, tools=OPENAI_TOOLS)
    )
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    assert answer.usage is not None
    seen.add(answer.usage.prompt_tokens, answer.usage.completion_tokens)


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_streamed_tool_calls_accumulate_into_the_same_calls(
    oai: openai.OpenAI,
    simulator: SimulatorProcess,
    seen: Tokens,
    include_usage: bool,
) -> None:
    request_id = new_id()
    with oai.chat.completions.stream(
        model=MODEL,
        messages=ASK,
        tools=OPENAI_TOOLS,
        stream_options={"include_usage": True} if include_usage else openai.omit,
        extra_headers={"x-request-id": request_id, "x-sim-chunks": "7"},
    ) as stream:
        fragments = [
            event.arguments_delta
            for event in stream
            if event.type == "tool_calls.function.arguments.delta"
        ]
        final = valid(stream.get_final_completion())
    [call] = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert len(fragments) > 1 and "".join(fragments) == call.function.arguments
    assert json.loads(call.function.arguments)["city"]
    if include_usage:
        assert final.usage is not None
        seen.add(final.usage.prompt_tokens, final.usage.completion_tokens)
    else:
        assert final.usage is None
        seen.add(*injected_usage(simulator, request_id))


def test_openai_embeddings_parse_as_float_vectors(oai: openai.OpenAI, seen: Tokens) -> None:
    # The SDK asks for base64 unless told otherwise, and decodes it into floats.
    default = valid(oai.embeddings.create(model="embedding-3", input=["first text", "second text"]))
    assert [item.index for item in default.data] == [0, 1]
    assert all(len(item.embedding) == 2048 for item in default.data)
    assert default.data[0].embedding != default.data[1].embedding
    floats = valid(
        oai.embeddings.create(
            model="embedding-3", input="first text", dimensions=2048, encoding_format="float"
        )
    )
    assert floats.data[0].embedding == pytest.approx(default.data[0].embedding, rel=1e-6)
    tokens = valid(oai.embeddings.create(model="embedding-3", input=[[1, 2, 3], [4]], dimensions=8))
    assert [len(item.embedding) for item in tokens.data] == [8, 8]
    assert tokens.usage.prompt_tokens == 4
    for answer in (default, floats, tokens):
        seen.add(answer.usage.prompt_tokens, 0)


def test_openai_models_list_and_retrieve(oai: openai.OpenAI, seen: Tokens) -> None:
    models = [valid(model) for model in oai.models.list()]
    assert MODEL in {model.id for model in models}
    assert valid(oai.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")


# Anthropic -------------------------------------------------------------------------------


def anthropic_counts(usage: anthropic.types.Usage) -> tuple[int, int]:
    """Input as the proxy counts it (cache reads and writes included), and output."""
    cached = (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    return usage.input_tokens + cached, usage.output_tokens


def test_anthropic_message_parses_and_is_counted(claude: anthropic.Anthropic, seen: Tokens) -> None:
    message = valid(claude.messages.create(model=MODEL, max_tokens=100, messages=ASK))
    assert message.stop_reason == "end_turn"
    [block] = message.content
    assert block.type == "text" and block.text
    seen.add(*anthropic_counts(message.usage))


def test_anthropic_messages_stream_gives_text_and_a_final_message(
    claude: anthropic.Anthropic, seen: Tokens
) -> None:
    with claude.messages.stream(model=MODEL, max_tokens=100, messages=ASK) as stream:
        text = "".join(stream.text_stream)
        final = valid(stream.get_final_message())
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    seen.add(*anthropic_counts(final.usage))


def test_anthropic_tool_use_parses_and_a_tool_result_gets_text(
    claude: anthropic.Anthropic, seen: Tokens
) -> None:
    message = valid(
        claude.messages.create(model=MODEL, max_tokens=100, messages=ASK, tools=ANTHROPIC_TOOLS)
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.name == "get_weather"
    assert isinstance(block.input, dict) and set(block.input) == {"city", "unit", "days"}
    seen.add(*anthropic_counts(message.usage))

    result = {"type": "tool_result", "tool_use_id": block.id, "content": "Sunny"}
    conversation: list[Any] = [
        *ASK,
        {"role": "assistant", "content": [block.model_dump()]},
        {"role": "user", "content": [result]},
    ]
    answer = valid(
        claude.messages.create(
            model=MODEL, max_tokens=100, messages=conversation, tools=ANTHROPIC_TOOLS
        )
    )
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"
    seen.add(*anthropic_counts(answer.usage))


def test_anthropic_streamed_tool_use_accumulates_its_input_json(
    claude: anthropic.Anthropic, seen: Tokens
) -> None:
    with claude.messages.stream(
        model=MODEL,
        max_tokens=100,
        messages=ASK,
        tools=ANTHROPIC_TOOLS,
        extra_headers={"x-sim-chunks": "6", "x-sim-tool-calls": "2"},
    ) as stream:
        partial = [event.partial_json for event in stream if event.type == "input_json"]
        final = valid(stream.get_final_message())
    assert final.stop_reason == "tool_use"
    [block] = final.content  # one tool offered: one call, however many are asked for
    assert block.type == "tool_use" and block.name == "get_weather"
    assert json.loads("".join(partial)) == block.input
    assert len(partial) > 1
    seen.add(*anthropic_counts(final.usage))


def test_anthropic_count_tokens_answers_and_counts_nothing(
    claude: anthropic.Anthropic, seen: Tokens
) -> None:
    counted = valid(claude.messages.count_tokens(model=MODEL, messages=ASK, tools=ANTHROPIC_TOOLS))
    assert isinstance(counted.input_tokens, int) and counted.input_tokens > 0
