"""The access log: one line per proxied request, written in batches.

The logging module costs tens of microseconds per record (a LogRecord, locks, a handler
chain, a write): a fifth of the proxy's CPU at 2,000 requests/s (bench/profile_proxy.py).
Requests only append a tuple here; a background task formats the lines and writes them
in one call every FLUSH_SECONDS, in the same format as every other log line, to the same
stream (stderr), or appended to a file (ACCESS_LOG_FILE; the demo's default, so that its
progress line stays readable). Memory is bounded: beyond MAX_PENDING unwritten lines, new
ones are counted and dropped (and the count is logged), never queued without end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

FLUSH_SECONDS = 0.1
MAX_PENDING = 100_000

Entry = tuple[float, str, str, str, int, float, str, int, int, str, str]

# ACCESS_LOG_FILE's spelling of "the terminal" (stderr), as for most Unix tools.
TERMINAL = "-"

log = logging.getLogger("zai_proxy.access")


def to_terminal(path: str) -> bool:
    """Whether an ACCESS_LOG_FILE value means stderr rather than a file."""
    return path in ("", TERMINAL)


class AccessLog:
    """Collects access lines and writes them in batches, to a stream or a file."""

    def __init__(self, stream: TextIO | None = None, path: str = "") -> None:
        self._stream = stream
        # A file is opened for appending, unbuffered: each batch is one write(2) with
        # O_APPEND, so the worker processes of one proxy (or the demo's two proxies) can
        # share a file without cutting into each other's lines.
        self._fd: int | None = None
        if not to_terminal(path):
            try:
                self._fd = os.open(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ValueError(f"cannot open the access log {path}: {exc.strerror}") from None
        self._pending: list[Entry] = []
        self._dropped = 0
        self._pid = os.getpid()

    def record(
        self,
        request_id: str,
        method: str,
        path: str,
        status: int,
        duration: float,
        model: str,
        tokens_in: int,
        tokens_out: int,
        source: str,
        trace_id: str = "",
    ) -> None:
        """Queue one request's line (cheap: the formatting happens at flush); with tracing
        on, the line ends with the request's trace id."""
        if len(self._pending) >= MAX_PENDING:
            self._dropped += 1
            return
        self._pending.append(
            (time.time(), request_id, method, path, status, duration, model, tokens_in,
             tokens_out, source, trace_id)
        )  # fmt: skip

    def flush(self) -> None:
        """Write what is queued, in one call."""
        if self._dropped:
            log.warning("access log dropped %d lines (writing too slow)", self._dropped)
            self._dropped = 0
        if not self._pending:
            return
        entries, self._pending = self._pending, []
        pid = self._pid
        lines = []
        for at, rid, method, path, status, duration, model, t_in, t_out, source, tid in entries:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
            lines.append(
                f"{stamp},{int(at % 1 * 1000):03d} INFO [{pid}] zai_proxy.access "
                f"request_id={rid} method={method} path={path} status={status} "
                f"duration_ms={duration * 1000:.1f} model={model} tokens_in={t_in} "
                f"tokens_out={t_out} tokens_source={source}"
                f"{f' trace_id={tid}' if tid else ''}\n"
            )
        self._write("".join(lines))

    def _write(self, text: str) -> None:
        if self._fd is None:
            stream = self._stream or sys.stderr
            stream.write(text)
            stream.flush()
            return
        data = memoryview(text.encode())
        while data:
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        """Close the file (a stream is the caller's)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def run(self) -> None:
        """Flush every FLUSH_SECONDS until cancelled, then once more and close."""
        try:
            while True:
                await asyncio.sleep(FLUSH_SECONDS)
                self.flush()
        finally:
            self.flush()
            self.close()
