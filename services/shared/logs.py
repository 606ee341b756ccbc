"""Logging set-up shared by every service: one line per event, to stderr.

Records are handed to a queue and written by a background thread, so that the event loop
never waits on a write to stderr (the access log writes a line per request).
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s %(message)s"

_listener: logging.handlers.QueueListener | None = None


def configure_logging(level: str = "INFO") -> None:
    """Send every logger (uvicorn's included) to stderr in one format, off the event loop."""
    global _listener
    if _listener is not None:
        _listener.stop()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, handler, respect_handler_level=False)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # aiohttp logs every client-side connection problem (the proxy counts them itself);
    # Alembic narrates every plugin it loads.
    for noisy in ("aiohttp", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
