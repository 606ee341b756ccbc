"""Tool calls: when the simulated model calls a tool, which one, and with what arguments.

The rule is deterministic, so tests know the answer from the request alone:

- a request calls tools when it offers at least one function tool and `tool_choice` does
  not say none; with `auto` (the default) it calls none when the conversation's last
  message is a tool result (the model then answers in text, as a real one would after
  the result came back); `required` / `any` / a named tool call one whatever came last;
- a named tool is called alone; otherwise the first `x-sim-tool-calls` (1) tools offered,
  in order;
- the arguments are one JSON object built from the tool's JSON schema (see `example`),
  serialised compactly, so the streamed fragments join into exactly that text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

Dialect = Literal["openai", "anthropic"]
# Deeper schemas get null (or {}) there: a schema that refers to itself cannot recurse.
MAX_SCHEMA_DEPTH = 8


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the simulated model makes: the tool's name and its JSON arguments."""

    name: str
    arguments: str  # a JSON object, compact

    @property
    def input(self) -> Any:
        """The arguments as a JSON value (Anthropic's `input`)."""
        return orjson.loads(self.arguments)


def _tools(dialect: Dialect, request: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, JSON schema of the arguments) of each function tool offered, in order."""
    offered = request.get("tools")
    if type(offered) is not list:
        return []
    found: list[tuple[str, Any]] = []
    for tool in offered:
        if type(tool) is not dict:
            continue
        if dialect == "openai":
            function = tool.get("function")
            if tool.get("type", "function") != "function" or type(function) is not dict:
                continue
            name, schema = function.get("name"), function.get("parameters")
        else:
            # Server tools (web search, code execution) carry their own type: the upstream
            # runs them, the model does not call them as functions.
            if tool.get("type", "custom") != "custom":
                continue
            name, schema = tool.get("name"), tool.get("input_schema")
        if isinstance(name, str) and name:
            found.append((name, schema))
    return found


def _choice(dialect: Dialect, request: dict[str, Any]) -> tuple[str, str | None]:
    """The tool choice as (mode, tool name): mode is auto, none, required or named."""
    choice = request.get("tool_choice")
    if dialect == "openai":
        if choice in ("none", "auto", "required"):
            return choice, None
        if type(choice) is dict:
            function = choice.get("function")
            name = function.get("name") if type(function) is dict else None
            if isinstance(name, str):
                return "named", name
        return "auto", None
    if type(choice) is not dict:
        return "auto", None
    kind = choice.get("type")
    if kind == "none":
        return "none", None
    if kind == "any":
        return "required", None
    if kind == "tool" and isinstance(choice.get("name"), str):
        return "named", choice["name"]
    return "auto", None


def _after_tool_result(dialect: Dialect, request: dict[str, Any]) -> bool:
    messages = request.get("messages")
    if type(messages) is not list or not messages or type(messages[-1]) is not dict:
        return False
    last = messages[-1]
    if dialect == "openai":
        return last.get("role") in ("tool", "function")
    content = last.get("content")
    return (
        last.get("role") == "user"
        and type(content) is list
        and any(type(block) is dict and block.get("type") == "tool_result" for block in content)
    )


def tool_calls(dialect: Dialect, request: dict[str, Any], count: int = 1) -> list[ToolCall]:
    """The calls the simulated model makes for this request: none, or up to `count`."""
    tools = _tools(dialect, request)
    if not tools:
        return []
    mode, named = _choice(dialect, request)
    if mode == "none" or (mode == "auto" and _after_tool_result(dialect, request)):
        return []
    chosen = [tool for tool in tools if tool[0] == named][:1] if mode == "named" else tools[:count]
    return [ToolCall(name, _arguments(schema)) for name, schema in chosen]


def _arguments(schema: Any) -> str:
    # Arguments are always a JSON object, even for a schema that describes something else.
    value = example(schema) if type(schema) is dict else None
    return orjson.dumps(value if type(value) is dict else {}).decode()


def output_tokens(calls: list[ToolCall]) -> int:
    """The output tokens calls count for: one per 4 characters of name and arguments
    (rounded up, per call), the same in both dialects, streamed or not."""
    return sum(-(-(len(call.name) + len(call.arguments)) // 4) for call in calls)


def example(schema: Any, name: str = "value", depth: int = 0) -> Any:
    """A value that fits a JSON schema: `const`, else the first `enum` value, else the first
    `anyOf`/`oneOf` branch, else one by `type` (an object fills every property)."""
    if type(schema) is not dict or depth > MAX_SCHEMA_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if type(enum) is list and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if type(branches) is list and branches:
            return example(branches[0], name, depth + 1)
    kind = schema.get("type")
    if type(kind) is list:
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        return _object(schema, depth)
    if kind == "array":
        items = schema.get("items", {})
        least = schema.get("minItems")
        size = least if type(least) is int and 1 <= least <= 16 else 1
        return [example(items, name, depth + 1) for _ in range(size)]
    if kind == "integer":
        return _number(schema, 1, int)
    if kind == "number":
        return _number(schema, 1.5, float)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return f"sim {name}"


def _object(schema: dict[str, Any], depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    if type(properties) is not dict:
        return {}
    return {str(key): example(value, str(key), depth + 1) for key, value in properties.items()}


def _number(schema: dict[str, Any], default: float, kind: type) -> Any:
    low, high = schema.get("minimum"), schema.get("maximum")
    value: float = default
    if isinstance(low, int | float) and not isinstance(low, bool):
        value = max(value, low)
    if isinstance(high, int | float) and not isinstance(high, bool):
        value = min(value, high)
    return kind(value)
