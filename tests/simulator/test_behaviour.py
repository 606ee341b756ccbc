"""Parsing the x-sim-* headers into a Behaviour."""

import pytest

from zai_proxy.simulator.behaviour import (
    DEFAULT_BEHAVIOUR,
    Behaviour,
    BehaviourError,
    Usage,
    parse_behaviour,
)


def _parse(**headers: str) -> Behaviour:
    return parse_behaviour(
        (b"x-sim-" + name.replace("_", "-").encode(), value.encode())
        for name, value in headers.items()
    )


def test_no_headers_give_the_default_behaviour() -> None:
    assert parse_behaviour([]) == DEFAULT_BEHAVIOUR
    assert DEFAULT_BEHAVIOUR.plain_stream
    assert not DEFAULT_BEHAVIOUR.sleeps
    assert not DEFAULT_BEHAVIOUR.scripts_error


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"latency_ms": "250"}, {"latency_ms": 250.0}),
        ({"chunks": "9", "chunk_gap_ms": "5"}, {"chunks": 9, "chunk_gap_ms": 5.0}),
        ({"usage": "none"}, {"usage": False}),
        (
            {"split": "7", "crlf": "1", "multiline": "true"},
            {"split": 7, "crlf": True, "multiline": True},
        ),
        ({"break_after": "0"}, {"break_after": 0}),
        ({"zai_code": "1305", "error_shape": "flat"}, {"zai_code": 1305, "error_shape": "flat"}),
        ({"status": "503", "body": "oops"}, {"status": 503, "body": b"oops"}),
        ({"fail_first": "2", "key": "k"}, {"fail_first": 2, "key": "k"}),
        ({"empty": "1", "retry_after": "3"}, {"empty": True, "retry_after": "3"}),
        ({"stream_bytes": "1000"}, {"stream_bytes": 1000}),
    ],
)
def test_each_header_sets_its_field(headers: dict[str, str], expected: dict[str, object]) -> None:
    behaviour = _parse(**headers)
    for field, value in expected.items():
        assert getattr(behaviour, field) == value


@pytest.mark.parametrize(
    "headers",
    [
        {"chunks": "0"},
        {"chunks": "many"},
        {"latency_ms": "-1"},
        {"status": "99"},
        {"error_shape": "xml"},
        {"usage": "maybe"},
        {"crlf": "perhaps"},
        {"fail_first": "1"},
        {"coalesce": "1", "stream_bytes": "100"},
        {"unknown": "1"},
    ],
)
def test_unusable_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(BehaviourError):
        _parse(**headers)


def test_usage_defaults_to_body_size_and_words_unless_given() -> None:
    assert DEFAULT_BEHAVIOUR.usage_for(400, 12) == Usage(prompt=100, completion=12)
    given = _parse(prompt_tokens="5", completion_tokens="6", cached_tokens="2")
    assert given.usage_for(400, 12) == Usage(prompt=5, completion=6, cached=2)
    assert _parse(usage="none").usage_for(400, 12) is None


def test_shaping_headers_leave_the_plain_path() -> None:
    assert not _parse(split="3").plain_stream
    assert not _parse(break_after="3").plain_stream
    assert _parse(crlf="1").plain_stream  # framing is the encoder's job, not the writer's
    assert _parse(chunk_gap_ms="10").sleeps
