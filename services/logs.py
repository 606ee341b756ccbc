"""Logging set-up shared by every service: one line per event, to stderr."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send every logger (uvicorn's included) to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # aiohttp logs every client-side connection problem; the proxy counts them itself.
    logging.getLogger("aiohttp").setLevel(max(logging.WARNING, root.level))
