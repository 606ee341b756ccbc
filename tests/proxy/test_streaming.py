"""SSE framing: the splitter cuts events as the spec does, whatever the chunking."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zai_proxy.proxy.streaming import SSESplitter, event_data, event_type

LF, CR = 0x0A, 0x0D


def reference_split(stream: bytes, *, final: bool = False) -> tuple[list[bytes], bytes]:
    """A byte-at-a-time reading of the spec: every line up to the first empty one is an event."""
    events: list[bytes] = []
    start = line_start = i = 0
    n = len(stream)
    while i < n:
        byte = stream[i]
        if byte not in (CR, LF):
            i += 1
            continue
        if byte == LF:
            line_end = i + 1
        elif i + 1 < n:
            line_end = i + 2 if stream[i + 1] == LF else i + 1
        elif final:
            line_end = i + 1
        else:
            break
        if i == line_start:
            events.append(stream[start:line_end])
            start = line_end
        line_start = i = line_end
    return events, stream[start:]


def reference_data(raw: bytes) -> bytes | None:
    """The spec's field parsing, written plainly."""
    text = raw.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = None
    for line in text.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data = value if data is None else data + b"\n" + value
    return data


def feed_all(splitter: SSESplitter, chunks: list[bytes]) -> list[bytes]:
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(splitter.feed(chunk))
    return events


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(p % (len(stream) + 1) for p in points), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(
    ("chunks", "events", "pending"),
    [
        ([b"data: a\n\n"], [b"data: a\n\n"], b""),
        ([b"data: a\n\ndata: b\n\ndata: c"], [b"data: a\n\n", b"data: b\n\n"], b"data: c"),
        ([b"data: a\n", b"\n"], [b"data: a\n\n"], b""),
        ([b"da", b"ta: a", b"\n", b"\nda"], [b"data: a\n\n"], b"da"),
        ([b"data: a\r\n\r\n"], [b"data: a\r\n\r\n"], b""),
        ([b"data: a\r\n\r", b"\n"], [b"data: a\r\n\r\n"], b""),
        ([b"data: a\r", b"\n\r\n"], [b"data: a\r\n\r\n"], b""),
        ([b"data: a\r\rdata: b"], [b"data: a\r\r"], b"data: b"),
        ([b"data: a\n\r\n: c\r\n\n"], [b"data: a\n\r\n", b": c\r\n\n"], b""),
        ([b"data: a\r\r"], [], b"data: a\r\r"),
        ([b"\n\ndata: a\n\n"], [b"\n", b"\n", b"data: a\n\n"], b""),
        (
            [b"event: x\ndata: 1\ndata: 2\nid: 7\n\n"],
            [b"event: x\ndata: 1\ndata: 2\nid: 7\n\n"],
            b"",
        ),
        (
            [b": keep-alive\n\n", b"data: [DONE]\n\n"],
            [b": keep-alive\n\n", b"data: [DONE]\n\n"],
            b"",
        ),
        ([b""], [], b""),
    ],
)
def test_splitter_returns_complete_events_and_keeps_the_rest(
    chunks: list[bytes], events: list[bytes], pending: bytes
) -> None:
    splitter = SSESplitter()
    assert feed_all(splitter, chunks) == events
    assert splitter.pending == pending


def test_a_cr_at_the_end_of_a_chunk_and_an_lf_at_the_start_of_the_next_are_one_line_end() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\r") == []
    assert splitter.feed(b"\ndata: b\r\n\r") == []
    assert splitter.feed(b"\n") == [b"data: a\r\ndata: b\r\n\r\n"]


def test_flush_releases_an_event_held_back_only_by_its_trailing_cr() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\r\rdata: b") == [b"data: a\r\r"]
    assert splitter.feed(b"\r\r") == []
    assert splitter.flush() == [b"data: b\r\r"]
    assert splitter.pending == b""


def test_flush_leaves_an_unterminated_event_pending() -> None:
    splitter = SSESplitter()
    splitter.feed(b"data: a\n")
    assert splitter.flush() == []
    assert splitter.pending == b"data: a\n"


def test_an_event_larger_than_the_limit_switches_the_splitter_off_and_frees_its_buffer() -> None:
    splitter = SSESplitter(max_event_bytes=16)
    assert splitter.feed(b"data: ok\n\ndata: " + b"x" * 8) == [b"data: ok\n\n"]
    assert not splitter.overflowed
    assert splitter.feed(b"x" * 8) == []
    assert splitter.overflowed
    assert splitter.pending == b""
    assert splitter.feed(b"\n\ndata: late\n\n") == []
    assert splitter.pending == b""


def test_a_complete_event_larger_than_the_limit_also_overflows() -> None:
    splitter = SSESplitter(max_event_bytes=16)
    assert splitter.feed(b"data: a\n\ndata: " + b"y" * 20 + b"\n\ndata: b\n\n") == [b"data: a\n\n"]
    assert splitter.overflowed


def test_a_non_positive_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_event_bytes"):
        SSESplitter(max_event_bytes=0)


def test_a_large_event_in_small_chunks_is_scanned_in_linear_time() -> None:
    splitter = SSESplitter(max_event_bytes=8 << 20)
    piece = b"x" * 1024
    started = time.perf_counter()
    for _ in range(4096):
        assert splitter.feed(piece) == []
    events = splitter.feed(b"\n\n")
    elapsed = time.perf_counter() - started
    assert [len(event) for event in events] == [4096 * 1024 + 2]
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("raw", "data"),
    [
        (b"data: hello\n\n", b"hello"),
        (b"data:hello\n\n", b"hello"),
        (b"data:  two spaces\n\n", b" two spaces"),
        (b"data: a\ndata: b\n\n", b"a\nb"),
        (b"data: a\r\ndata: b\r\n\r\n", b"a\nb"),
        (b"data: a\rdata: b\r\r", b"a\nb"),
        (b"data: a\rb\n\n", b"a"),
        (b"event: ping\ndata: {}\n\n", b"{}"),
        (b"data\n\n", b""),
        (b"data:\n\n", b""),
        (b"data\ndata\n\n", b"\n"),
        (b": comment\n\n", None),
        (b": comment\ndata: x\n\n", b"x"),
        (b"event: ping\n\n", None),
        (b"id: 1\nretry: 10\n\n", None),
        (b"\n", None),
        (b"Data: x\n\n", None),
        (b"\xef\xbb\xbfdata: bom\n\n", b"bom"),
        (b"data: [DONE]\n\n", b"[DONE]"),
        (b"data: a:b: c\n\n", b"a:b: c"),
    ],
)
def test_event_data_follows_the_spec(raw: bytes, data: bytes | None) -> None:
    assert event_data(raw) == data


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"data: x\n\n", b"message"),
        (b"event: message_start\ndata: {}\n\n", b"message_start"),
        (b"data: {}\nevent: content_block_delta\n\n", b"content_block_delta"),
        (b"data: {}\r\nevent:ping\r\n\r\n", b"ping"),
        (b"event: a\nevent: b\ndata: x\n\n", b"b"),
        (b"event:\ndata: x\n\n", b"message"),
        (b"events: x\ndata: y\n\n", b"message"),
        (b": only a comment\n\n", b"message"),
    ],
)
def test_event_type_is_the_event_field_or_message(raw: bytes, kind: bytes) -> None:
    assert event_type(raw) == kind


_line_ends = st.sampled_from([b"\n", b"\r\n", b"\r"])
_field_lines = st.one_of(
    st.builds(lambda v: b"data: " + v, st.binary(max_size=12)),
    st.builds(lambda v: b"data:" + v, st.binary(max_size=12)),
    st.just(b"data"),
    st.builds(lambda v: b": " + v, st.binary(max_size=8)),
    st.sampled_from([b"event: ping", b"id: 42", b"retry: 1000", b"field-without-colon"]),
    st.just(b""),
)


@st.composite
def sse_streams(draw: st.DrawFn) -> bytes:
    """Field lines, comments and blank lines, each ended by any of the three line ends."""
    parts: list[bytes] = []
    for line in draw(st.lists(_field_lines, max_size=20)):
        clean = line.replace(b"\r", b"").replace(b"\n", b"")
        parts.append(clean + draw(_line_ends))
    if draw(st.booleans()):
        parts.append(draw(st.binary(max_size=6)))
    return b"".join(parts)


noisy_streams = st.lists(
    st.sampled_from([b"\n", b"\r", b"\r\n", b"data: x", b":", b"a", b"\xef\xbb\xbf"]), max_size=40
).map(b"".join)
any_stream = st.one_of(sse_streams(), noisy_streams, st.binary(max_size=64))
cut_points = st.lists(st.integers(min_value=0), max_size=12)


@settings(max_examples=400, deadline=None)
@given(stream=any_stream, points=cut_points)
def test_events_and_pending_reassemble_the_input_and_match_the_spec_for_any_cuts(
    stream: bytes, points: list[int]
) -> None:
    splitter = SSESplitter()
    events = feed_all(splitter, cut(stream, points))
    assert b"".join(events) + splitter.pending == stream
    assert (events, splitter.pending) == reference_split(stream)
    assert events + splitter.flush() == reference_split(stream, final=True)[0]


@settings(max_examples=200, deadline=None)
@given(stream=any_stream)
def test_every_event_is_the_same_one_byte_at_a_time(stream: bytes) -> None:
    whole = SSESplitter()
    bytewise = SSESplitter()
    expected = whole.feed(stream)
    assert feed_all(bytewise, [stream[i : i + 1] for i in range(len(stream))]) == expected


@settings(max_examples=400, deadline=None)
@given(stream=any_stream)
def test_event_data_and_type_agree_with_a_plain_reading_of_the_spec(stream: bytes) -> None:
    events, _ = reference_split(stream, final=True)
    for raw in events:
        assert event_data(raw) == reference_data(raw)
        assert event_type(raw) in (b"message", b"ping")


@settings(max_examples=300, deadline=None)
@given(stream=any_stream, points=cut_points, limit=st.integers(min_value=1, max_value=24))
def test_overflow_depends_only_on_event_sizes_and_memory_stays_bounded(
    stream: bytes, points: list[int], limit: int
) -> None:
    splitter = SSESplitter(max_event_bytes=limit)
    events: list[bytes] = []
    for chunk in cut(stream, points):
        events.extend(splitter.feed(chunk))
        assert len(splitter.pending) <= limit
    complete, rest = reference_split(stream)
    oversized = [i for i, event in enumerate(complete) if len(event) > limit]
    if oversized:
        assert splitter.overflowed
        assert events == complete[: oversized[0]]
    else:
        assert splitter.overflowed == (len(rest) > limit)
        assert events == complete
    if splitter.overflowed:
        assert splitter.pending == b""
