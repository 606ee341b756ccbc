"""The worker pool bounds upstream concurrency and never lets a request hang."""

from __future__ import annotations

import asyncio

import pytest

from zai_proxy.proxy.admission import WorkerPool
from zai_proxy.proxy.errors import Overloaded


async def test_free_slots_are_taken_without_waiting() -> None:
    pool = WorkerPool(workers=2, max_queue=0, timeout=1)
    assert await pool.acquire() == 0.0
    assert await pool.acquire() == 0.0
    assert pool.busy == 2


async def test_a_full_queue_refuses_at_once() -> None:
    pool = WorkerPool(workers=1, max_queue=0, timeout=5)
    await pool.acquire()
    with pytest.raises(Overloaded) as refused:
        await pool.acquire()
    assert refused.value.retry_after == 1.0


async def test_a_waiting_request_gets_the_next_free_slot() -> None:
    pool = WorkerPool(workers=1, max_queue=1, timeout=5)
    await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.05)
    assert pool.waiting == 1
    pool.release()
    waited = await waiter
    assert waited >= 0.04
    assert (pool.busy, pool.waiting) == (1, 0)


async def test_a_wait_past_the_timeout_is_refused_and_leaves_no_trace() -> None:
    pool = WorkerPool(workers=1, max_queue=4, timeout=0.05)
    await pool.acquire()
    with pytest.raises(Overloaded):
        await pool.acquire()
    assert (pool.busy, pool.waiting) == (1, 0)
    pool.release()
    assert await pool.acquire() == 0.0


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    pool = WorkerPool(workers=1, max_queue=1, timeout=5)
    await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.waiting == 0
    pool.release()
    assert await pool.acquire() == 0.0


@pytest.mark.parametrize(("workers", "queue", "timeout"), [(0, 1, 1), (1, -1, 1), (1, 1, 0)])
def test_nonsense_sizes_are_refused(workers: int, queue: int, timeout: float) -> None:
    with pytest.raises(ValueError):
        WorkerPool(workers, queue, timeout)
