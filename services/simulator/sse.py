"""Server-sent event framing, in the plain form and in the legal variants clients must parse."""

from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class SseFormat:
    """How events are framed: line endings and whether JSON is spread over many data lines."""

    crlf: bool = False
    multiline: bool = False

    def event(self, payload: object, name: bytes | None = None) -> bytes:
        """Frame one event whose data is `payload` as JSON (or as is, when it is bytes)."""
        if isinstance(payload, bytes):
            data = payload
        elif self.multiline:
            data = orjson.dumps(payload, option=orjson.OPT_INDENT_2)
        else:
            data = orjson.dumps(payload)
        if not (self.crlf or self.multiline):
            if name is None:
                return b"data: " + data + b"\n\n"
            return b"event: " + name + b"\ndata: " + data + b"\n\n"
        newline = b"\r\n" if self.crlf else b"\n"
        lines = [b"event: " + name] if name is not None else []
        lines.extend(b"data: " + line for line in data.split(b"\n"))
        lines.append(newline)
        return newline.join(lines)

    def comment(self, text: bytes) -> bytes:
        """Frame a comment line that clients must ignore."""
        newline = b"\r\n" if self.crlf else b"\n"
        return b": " + text + newline + newline


PLAIN = SseFormat()
