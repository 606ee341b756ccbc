"""The access log: one line per proxied request, written in batches.

The logging module costs tens of microseconds per record (a LogRecord, locks, a handler
chain, a write): a fifth of the proxy's CPU at 2,000 requests/s (bench/profile_proxy.py).
Requests only append a tuple here; a background task formats the lines and writes them
in one call every FLUSH_SECONDS, in the same format as every other log line, to the same
stream. Memory is bounded: beyond MAX_PENDING unwritten lines, new ones are counted and
dropped (and the count is logged), never queued without end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import TextIO

FLUSH_SECONDS = 0.1
MAX_PENDING = 100_000

Entry = tuple[float, str, str, str, int, float, str, int, int, str]

log = logging.getLogger("zai_proxy.access")


class AccessLog:
    """Collects access lines and writes them in batches."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
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
    ) -> None:
        """Queue one request's line (cheap: the formatting happens at flush)."""
        if len(self._pending) >= MAX_PENDING:
            self._dropped += 1
            return
        self._pending.append(
            (time.time(), request_id, method, path, status, duration, model, tokens_in,
             tokens_out, source)
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
        for at, rid, method, path, status, duration, model, t_in, t_out, source in entries:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
            lines.append(
                f"{stamp},{int(at % 1 * 1000):03d} INFO [{pid}] zai_proxy.access "
                f"request_id={rid} method={method} path={path} status={status} "
                f"duration_ms={duration * 1000:.1f} model={model} tokens_in={t_in} "
                f"tokens_out={t_out} tokens_source={source}\n"
            )
        stream = self._stream or sys.stderr
        stream.write("".join(lines))
        stream.flush()

    async def run(self) -> None:
        """Flush every FLUSH_SECONDS until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(FLUSH_SECONDS)
                self.flush()
        finally:
            self.flush()
