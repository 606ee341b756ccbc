"""Writing an SSE stream to ASGI `send`, shaped the way x-sim-* asks (split, coalesced, slow)."""

import asyncio
from collections.abc import Iterable

from .behaviour import Behaviour
from .responses import ConnectionBreak
from .sse import SseFormat
from .types import Send

SPLIT_PAUSE_S = 0.002
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_START = {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS}
_END = {"type": "http.response.body", "body": b"", "more_body": False}


async def send_stream(
    send: Send, events: Iterable[bytes], behaviour: Behaviour, fmt: SseFormat
) -> None:
    """Send the SSE response headers, then the events, then the end of the body."""
    await send(_START)
    if behaviour.plain_stream:
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send(_END)
    elif behaviour.coalesce:
        await _send_coalesced(send, events, behaviour, fmt)
    else:
        await _send_shaped(send, events, behaviour, fmt)


async def _send_coalesced(
    send: Send, events: Iterable[bytes], behaviour: Behaviour, fmt: SseFormat
) -> None:
    separator = fmt.comment(b"keep-alive") if behaviour.comments else b""
    if behaviour.break_after is None:
        body = separator.join(events)
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    kept = [event for _, event in zip(range(behaviour.break_after), events, strict=False)]
    await send({"type": "http.response.body", "body": separator.join(kept), "more_body": True})
    raise ConnectionBreak


async def _send_shaped(
    send: Send, events: Iterable[bytes], behaviour: Behaviour, fmt: SseFormat
) -> None:
    gap = behaviour.chunk_gap_ms / 1000
    comment = fmt.comment(b"keep-alive") if behaviour.comments else b""
    split = behaviour.split
    for sent, event in enumerate(events):
        if sent == behaviour.break_after:
            raise ConnectionBreak
        if sent:
            if gap:
                await asyncio.sleep(gap)
            if comment:
                event = comment + event
        if split:
            for offset in range(0, len(event), split):
                if sent or offset:
                    await asyncio.sleep(SPLIT_PAUSE_S)
                piece = event[offset : offset + split]
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        else:
            await send({"type": "http.response.body", "body": event, "more_body": True})
    if behaviour.break_after is not None:
        # The stream had fewer events than asked for: still no terminating chunk.
        raise ConnectionBreak
    await send(_END)
