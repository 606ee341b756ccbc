"""What a replica admits at once: MAX_WORKERS upstream requests and a bounded queue
(WorkerPool), and MAX_BUFFERED_BODY_BYTES of request bodies in memory (BodyBudget)."""

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

    def is_full(self) -> bool:
        """Every worker busy and the queue full: a new request would be refused."""
        return self.busy >= self.workers and self.waiting >= self.max_queue

    def is_idle(self) -> bool:
        """No request holds a worker or waits for one."""
        return self.busy == 0 and self.waiting == 0

    def release(self) -> None:
        """Give a slot back."""
        self.busy -= 1
        self._slots.release()


class BodyBudget:
    """Bytes of request bodies that every request of the process together may hold.

    A body is read whole before its request is forwarded (to parse it and to retry it),
    so without a bound a crowd of large uploads holds memory without limit. A request
    reserves its declared length before a byte of the body is read (a chunked body: each
    chunk as it comes) and gives it back when its exchange ends.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the body budget must be at least one byte")
        self.limit = limit
        self.held = 0

    def reserve(self, size: int) -> None:
        """Take ``size`` bytes of the budget, or raise Overloaded (503) and take nothing."""
        if self.held + size > self.limit:
            raise Overloaded(
                "the proxy holds as many request bodies as it may; try again shortly",
                retry_after=1.0,
            )
        self.held += size

    def release(self, size: int) -> None:
        """Give back what a request reserved."""
        self.held -= size
