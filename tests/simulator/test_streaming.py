"""Stream shaping: split, coalesced, CRLF, multi-line, comments, gaps, breaks and bulk."""

import time

import httpx
import orjson
import pytest

from zai_proxy.simulator.behaviour import DEFAULT_TEXT
from zai_proxy.simulator.process import SimulatorProcess

from .wire import dechunk, json_events, parse_sse, raw_request

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
STREAM = orjson.dumps({"model": "glm-4.6", "stream": True, "messages": []})


def _text_of(events: list[object]) -> str:
    return "".join(
        event["choices"][0]["delta"].get("content", "")
        for event in events
        if isinstance(event, dict) and event["choices"]
    )


def test_a_plain_stream_sends_one_chunk_per_event(simulator: SimulatorProcess) -> None:
    response, _, _ = raw_request(simulator.url, CHAT, STREAM, {"x-sim-chunks": "5"})
    chunks, complete = dechunk(response)
    assert complete
    assert len(chunks) == 5 + 2  # content deltas, the finish chunk, [DONE]
    assert all(chunk.endswith(b"\n\n") for chunk in chunks)


def test_split_events_arrive_in_many_small_reads(simulator: SimulatorProcess) -> None:
    response, reads, _ = raw_request(simulator.url, CHAT, STREAM, {"x-sim-split": "20"})
    chunks, complete = dechunk(response)
    assert complete
    assert all(len(chunk) <= 20 for chunk in chunks)
    assert len(chunks) > 40
    # 2 ms between pieces puts (nearly) each one in its own TCP read.
    assert len(reads) > len(chunks) // 2
    body = b"".join(chunks).decode()
    assert _text_of(json_events(body)) == DEFAULT_TEXT


def test_coalesce_sends_the_whole_stream_in_one_chunk(simulator: SimulatorProcess) -> None:
    response, _, _ = raw_request(simulator.url, CHAT, STREAM, {"x-sim-coalesce": "1"})
    chunks, complete = dechunk(response)
    assert complete
    assert len(chunks) == 1
    assert len(parse_sse(chunks[0].decode())) == 5 + 2


def test_crlf_ends_every_line_with_cr_lf(client: httpx.Client) -> None:
    response = client.post(MESSAGES, content=STREAM, headers={"x-sim-crlf": "1"})
    body = response.text
    assert body.endswith("\r\n\r\n")
    assert body.count("\n") == body.count("\r\n")
    assert [name for name, _ in parse_sse(body)][-1] == "message_stop"


def test_multiline_spreads_json_over_several_data_lines(client: httpx.Client) -> None:
    response = client.post(CHAT, content=STREAM, headers={"x-sim-multiline": "1"})
    first_event = response.text.split("\n\n")[0]
    assert first_event.count("data:") > 3
    events = json_events(response.text)
    assert events[-1] == "[DONE]"
    assert _text_of(events) == DEFAULT_TEXT


def test_multiline_and_crlf_together_still_parse(client: httpx.Client) -> None:
    headers = {"x-sim-multiline": "1", "x-sim-crlf": "1"}
    response = client.post(MESSAGES, content=STREAM, headers=headers)
    names = [name for name, _ in parse_sse(response.text)]
    assert names[0] == "message_start" and names[-1] == "message_stop"


def test_comments_sit_between_events_and_are_ignored(client: httpx.Client) -> None:
    response = client.post(CHAT, content=STREAM, headers={"x-sim-comments": "1"})
    assert response.text.count(": keep-alive\n\n") == 5 + 1
    assert _text_of(json_events(response.text)) == DEFAULT_TEXT


def test_the_chunk_gap_spaces_the_events(client: httpx.Client) -> None:
    started = time.perf_counter()
    client.post(CHAT, content=STREAM, headers={"x-sim-chunks": "3", "x-sim-chunk-gap-ms": "40"})
    # three deltas, the finish chunk and [DONE]: four gaps
    assert time.perf_counter() - started >= 4 * 0.04


def test_latency_delays_the_response_headers(client: httpx.Client) -> None:
    started = time.perf_counter()
    client.post(CHAT, json={}, headers={"x-sim-latency-ms": "150"})
    assert time.perf_counter() - started >= 0.15


def test_break_after_truncates_the_body_and_closes_the_connection(
    simulator: SimulatorProcess,
) -> None:
    response, _, eof = raw_request(simulator.url, CHAT, STREAM, {"x-sim-break-after": "2"})
    chunks, complete = dechunk(response)
    assert eof
    assert not complete
    assert len(parse_sse(b"".join(chunks).decode())) == 2


def test_break_after_is_a_protocol_error_for_a_client(client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(CHAT, content=STREAM, headers={"x-sim-break-after": "3"})
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(CHAT, json={}, headers={"x-sim-break-after": "10"})
    assert client.get("/_sim/stats").status_code == 200


def test_break_after_more_events_than_exist_still_truncates(simulator: SimulatorProcess) -> None:
    response, _, eof = raw_request(simulator.url, CHAT, STREAM, {"x-sim-break-after": "99"})
    chunks, complete = dechunk(response)
    assert eof and not complete
    assert b"[DONE]" in b"".join(chunks)


@pytest.mark.parametrize("size", [3_000_000, 20_000_000])
def test_stream_bytes_sends_about_that_many_bytes(client: httpx.Client, size: int) -> None:
    total = 0
    tail = b""
    with client.stream("POST", CHAT, json={}, headers={"x-sim-stream-bytes": str(size)}) as r:
        assert r.headers["content-type"] == "text/event-stream"
        for data in r.iter_raw():
            total += len(data)
            tail = (tail + data)[-4096:]
    assert size <= total <= size + 20_000  # one ~16 KB event of overshoot at most
    events = json_events(tail.decode().split("\n\n", 1)[1])
    assert events[-1] == "[DONE]"


def test_stream_bytes_in_the_anthropic_dialect_reports_the_words(client: httpx.Client) -> None:
    headers = {"x-sim-stream-bytes": "500000", "x-sim-text": "one two three four"}
    response = client.post(MESSAGES, json={}, headers=headers)
    events = [(name, orjson.loads(data)) for name, data in parse_sse(response.text)]
    text = "".join(d["delta"]["text"] for name, d in events if name == "content_block_delta")
    assert 500_000 <= len(response.content) <= 520_000
    assert events[-2][1]["usage"]["output_tokens"] == len(text.split())
    assert events[-1][0] == "message_stop"
