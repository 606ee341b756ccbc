"""Incremental Server-Sent Events parsing for the forwarding path.

The proxy passes upstream bytes through untouched and only *looks* at them: `SSESplitter`
cuts the byte stream into raw events without copying more than the event that is still
incomplete, and `event_data` / `event_type` read one raw event's fields.

Framing follows the HTML SSE spec: a line ends at CRLF, LF or a lone CR (mixed freely),
and an event ends at an empty line. A raw event is every line up to and including the
first empty line, so a stray blank line between events comes out as an event of its own
(with no data). Where a chunk ends in a CR that may be the first half of a CRLF, the event
it would complete is held back until the next byte (or `flush`) settles it, so the events
are the same however the stream is cut.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SSESplitter", "event_data", "event_type"]

DEFAULT_MAX_EVENT_BYTES = 1 << 20

_LF = 0x0A
_CR = 0x0D
_BOM = b"\xef\xbb\xbf"

# Two line ends in a row, CRLF counting as one. The possessive `\n?+` keeps a CRLF from
# being read as CR + LF (two line ends) when the search backtracks.
_BLANK_LINE = re.compile(rb"(?:\r\n?+|\n)(?:\r\n?+|\n)")
_LINE_END = re.compile(rb"\r\n?|\n")


class SSESplitter:
    """Splits an SSE byte stream into complete raw events, incrementally."""

    __slots__ = ("_buf", "_cr", "_max", "_overflowed", "_scan")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_event_bytes <= 0:
            raise ValueError(f"max_event_bytes must be positive, got {max_event_bytes}")
        self._max = max_event_bytes
        self._buf = bytearray()
        # Offset in _buf from which the search for the current event's end resumes, so a
        # large event arriving in small chunks is scanned once, not once per chunk.
        self._scan = 0
        # LF-only streams (nearly all of them) take the bytes.find path; the first CR seen
        # switches this stream to the regex path for good.
        self._cr = False
        self._overflowed = False

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet part of a complete event."""
        return bytes(self._buf)

    @property
    def max_event_bytes(self) -> int:
        """The largest event this splitter holds before giving up."""
        return self._max

    @property
    def overflowed(self) -> bool:
        """Whether one event outgrew `max_event_bytes`; the splitter is then inert."""
        return self._overflowed

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the events this chunk completes, each exactly as received, blank line included."""
        if self._overflowed or not chunk:
            return []
        if not self._cr and b"\r" in chunk:
            self._cr = True
        # A streaming upstream mostly flushes one whole event per chunk: hand it back as is.
        if (
            not self._buf
            and not self._cr
            and chunk[0] != _LF
            and 2 <= len(chunk) <= self._max
            and chunk.find(b"\n\n") == len(chunk) - 2
        ):
            return [chunk]
        if self._buf:
            self._buf += chunk
            return self._split(self._buf, final=False)
        return self._split(chunk, final=False)

    def flush(self) -> list[bytes]:
        """At end of stream, return the event held back only by a trailing CR."""
        if self._overflowed or not self._buf:
            return []
        return self._split(self._buf, final=True)

    def _split(self, data: bytes | bytearray, *, final: bool) -> list[bytes]:
        events: list[bytes] = []
        n = len(data)
        pos = 0
        scan = self._scan
        cr = self._cr
        limit = self._max
        view = memoryview(data) if data is self._buf else None
        while pos < n:
            first = data[pos]
            if first == _LF:
                end = pos + 1
            elif first == _CR:
                if pos + 1 < n:
                    end = pos + 2 if data[pos + 1] == _LF else pos + 1
                elif final:
                    end = pos + 1
                else:
                    scan = pos
                    break
            elif cr:
                match = _BLANK_LINE.search(data, max(scan, pos))
                if match is None:
                    # A blank line is at most 4 bytes (CRLF CRLF); one that the next chunk
                    # completes starts within the last 3 bytes seen.
                    scan = max(pos, n - 3)
                    break
                end = match.end()
                if end == n and data[end - 1] == _CR and not final:
                    # This CR may be the first half of a CRLF: the next byte decides.
                    scan = match.start()
                    break
            else:
                found = data.find(b"\n\n", max(scan, pos))
                if found < 0:
                    scan = max(pos, n - 1)
                    break
                end = found + 2
            if end - pos > limit:
                return self._overflow(events)
            events.append(view[pos:end].tobytes() if view is not None else bytes(data[pos:end]))
            pos = end
            scan = pos
        if n - pos > limit:
            return self._overflow(events)
        if view is not None:
            view.release()
            del self._buf[:pos]
        elif pos < n:
            self._buf += memoryview(data)[pos:]
        self._scan = scan - pos
        return events

    def _overflow(self, events: list[bytes]) -> list[bytes]:
        self._overflowed = True
        self._buf = bytearray()
        self._scan = 0
        return events


def _strip_bom(raw: bytes) -> bytes:
    return raw[3:] if raw[:3] == _BOM else raw


def _fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    fields: list[tuple[bytes, bytes]] = []
    for line in _LINE_END.split(_strip_bom(raw)):
        if not line or line[0] == 0x3A:
            continue
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        fields.append((name, value))
    return fields


def event_data(raw_event: bytes) -> bytes | None:
    """The event's data per the SSE spec, or None when it has no data field (comments, pings)."""
    # The shape of nearly every event on the wire: one `data:` line and an LF blank line.
    if raw_event[:5] == b"data:" and raw_event[-2:] == b"\n\n":
        line_end = raw_event.find(b"\n")
        if line_end == len(raw_event) - 2 and raw_event.find(b"\r", 0, line_end) < 0:
            start = 6 if raw_event[5:6] == b" " else 5
            return raw_event[start:line_end]
    data = [value for name, value in _fields(raw_event) if name == b"data"]
    return b"\n".join(data) if data else None


def event_type(raw_event: bytes) -> bytes:
    """The event's `event:` field value, or b"message" when it has none (or an empty one)."""
    if raw_event[:5] == b"data:" and b"\nevent" not in raw_event and b"\revent" not in raw_event:
        return b"message"
    kind = b""
    for name, value in _fields(raw_event):
        if name == b"event":
            kind = value
    return kind or b"message"
