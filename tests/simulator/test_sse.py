"""SSE framing variants and the output text helpers."""

import orjson
from hypothesis import given
from hypothesis import strategies as st

from zai_proxy.simulator.sse import PLAIN, SseFormat
from zai_proxy.simulator.text import bulk_text, split_text, word_count

from .wire import parse_sse

PAYLOAD = {"type": "ping", "nested": {"a": [1, 2]}}


def test_a_plain_event_is_one_data_line() -> None:
    assert PLAIN.event(b"[DONE]") == b"data: [DONE]\n\n"
    assert PLAIN.event({"a": 1}, b"x") == b'event: x\ndata: {"a":1}\n\n'


def test_crlf_and_multiline_frames_parse_back_to_the_same_json() -> None:
    for fmt in (SseFormat(crlf=True), SseFormat(multiline=True), SseFormat(True, True)):
        framed = fmt.event(PAYLOAD, b"ping").decode()
        [(name, data)] = parse_sse(framed)
        assert name == "ping"
        assert orjson.loads(data) == PAYLOAD


def test_a_comment_is_ignored_by_parsers() -> None:
    assert SseFormat(crlf=True).comment(b"keep-alive") == b": keep-alive\r\n\r\n"
    assert parse_sse(PLAIN.comment(b"keep-alive").decode()) == []


@given(st.text(), st.integers(min_value=1, max_value=50))
def test_split_text_gives_exactly_n_pieces_that_join_back(text: str, pieces: int) -> None:
    parts = split_text(text, pieces)
    assert len(parts) == pieces
    assert "".join(parts) == text


def test_bulk_text_is_about_16_kb_of_whole_words() -> None:
    text = bulk_text("alpha beta")
    assert 16 * 1024 <= len(text) < 16 * 1024 + 20
    assert word_count(text * 3) == 3 * word_count(text)
