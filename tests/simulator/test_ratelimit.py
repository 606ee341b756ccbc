"""The hidden limit: token bucket, schedule and concurrency cap, on a fake clock."""

from typing import Any

import pytest

from zai_proxy.simulator.config import SimulatorConfig
from zai_proxy.simulator.ratelimit import HiddenLimiter, TokenBucket, parse_schedule


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _admitted(limiter: HiddenLimiter, attempts: int) -> int:
    admitted = 0
    for _ in range(attempts):
        if limiter.admit() is None:
            admitted += 1
            limiter.release()
    return admitted


def test_a_bucket_allows_one_second_of_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, now=0.0)
    assert sum(bucket.try_take(0.0) for _ in range(20)) == 10
    assert sum(bucket.try_take(0.5) for _ in range(20)) == 5
    assert sum(bucket.try_take(10.0) for _ in range(20)) == 10


def test_a_slow_rate_still_bursts_one_request() -> None:
    bucket = TokenBucket(rate=0.5, now=0.0)
    assert bucket.try_take(0.0)
    assert not bucket.try_take(1.0)
    assert bucket.try_take(2.0)


def test_over_the_rate_the_limiter_answers_1305() -> None:
    clock = FakeClock()
    limiter = HiddenLimiter(rate=5, schedule=(), max_concurrency=None, clock=clock)
    assert _admitted(limiter, 5) == 5
    assert limiter.admit() == 1305
    clock.now += 0.2
    assert limiter.admit() is None


def test_over_the_concurrency_cap_the_limiter_answers_1302() -> None:
    limiter = HiddenLimiter(rate=None, schedule=(), max_concurrency=2, clock=FakeClock())
    assert limiter.admit() is None
    assert limiter.admit() is None
    assert limiter.admit() == 1302
    limiter.release()
    assert limiter.admit() is None
    assert limiter.in_flight == 2


def test_the_schedule_changes_the_rate_at_its_times() -> None:
    clock = FakeClock()
    schedule = parse_schedule("20@60, 40@0, 60@120")
    limiter = HiddenLimiter(rate=None, schedule=schedule, max_concurrency=None, clock=clock)
    assert limiter.current_rate() == 40
    clock.now += 59.9
    assert limiter.current_rate() == 40
    clock.now += 0.1
    assert limiter.current_rate() == 20
    assert _admitted(limiter, 100) == 20
    clock.now += 100
    assert limiter.current_rate() == 60
    assert _admitted(limiter, 100) == 60


def test_a_base_rate_holds_until_the_first_step() -> None:
    clock = FakeClock()
    limiter = HiddenLimiter(rate=3, schedule=((10.0, 8.0),), max_concurrency=None, clock=clock)
    assert limiter.current_rate() == 3
    assert _admitted(limiter, 10) == 3
    clock.now += 10
    assert limiter.current_rate() == 8


def test_no_limits_admit_everything() -> None:
    limiter = HiddenLimiter(rate=None, schedule=(), max_concurrency=None, clock=FakeClock())
    assert _admitted(limiter, 1000) == 1000
    assert limiter.current_rate() is None


@pytest.mark.parametrize("text", ["40", "40@", "x@0", "0@10", "10@-1"])
def test_a_bad_schedule_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(text)


@pytest.mark.parametrize(
    "kwargs",
    [{"rate_limit": 0}, {"max_concurrency": 0}, {"recorded_requests": 0}, {"schedule": ((0, -1),)}],
)
def test_a_bad_config_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(**kwargs)
