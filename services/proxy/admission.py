"""The per-replica worker pool: MAX_WORKERS upstream requests at once, a bounded queue."""

from __future__ import annotations

import asyncio
import time

from zai_proxy.proxy.errors import Overloaded


class WorkerPool:
    """Bounds concurrent upstream requests; the rest wait in a bounded queue, then get 503."""

    def __init__(self, workers: int, max_queue: int, timeout: float) -> None:
        if workers < 1 or max_queue < 0 or timeout <= 0:
            raise ValueError("workers >= 1, max_queue >= 0 and timeout > 0 are required")
        self.workers = workers
        self.max_queue = max_queue
        self.timeout = timeout
        self.busy = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(workers)

    async def acquire(self) -> float:
        """Take a worker slot; return how long it took. Raise Overloaded instead of hanging."""
        if self.busy < self.workers and not self.waiting:
            await self._slots.acquire()
            self.busy += 1
            return 0.0
        if self.waiting >= self.max_queue:
            raise Overloaded("the proxy's request queue is full", retry_after=1.0)
        start = time.perf_counter()
        self.waiting += 1
        try:
            async with asyncio.timeout(self.timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise Overloaded(
                f"no upstream worker became free within {self.timeout:g} s",
                retry_after=min(self.timeout, 5.0),
            ) from None
        finally:
            self.waiting -= 1
        self.busy += 1
        return time.perf_counter() - start

    def is_idle(self) -> bool:
        """No request holds a worker or waits for one."""
        return self.busy == 0 and self.waiting == 0

    def release(self) -> None:
        """Give a slot back."""
        self.busy -= 1
        self._slots.release()
