"""Stopping a service's background tasks, for sure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger("zai_proxy")

# How long a cancelled task gets before it is cancelled again.
RECANCEL_SECONDS = 0.1


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait until every one has ended; log any that failed.

    A task that runs on is cancelled again: on Python 3.11, ``asyncio.wait_for`` (which
    redis-py puts around every socket write) swallows a cancellation that lands as the call
    completes (bpo-42130), and a loop that goes on after store errors would never end.
    """
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())
