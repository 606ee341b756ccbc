"""Round slots: on the wall clock's boundaries, one interval apart on the monotonic clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from zai_proxy.collector.cadence import RoundSchedule


@dataclass
class Clocks:
    """A wall clock and a monotonic clock that the test moves."""

    wall: float
    monotonic: float = 500.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.monotonic += seconds

    def schedule(self, interval: float) -> RoundSchedule:
        return RoundSchedule(interval, wall=lambda: self.wall, monotonic=lambda: self.monotonic)


def test_the_first_slot_is_the_next_boundary_of_the_wall_clock() -> None:
    clocks = Clocks(wall=1_000_002.0)

    slot = clocks.schedule(5).next()

    assert slot.wall == 1_000_005.0
    assert slot.deadline == 503.0


def test_slots_are_one_interval_apart_whatever_the_rounds_take() -> None:
    clocks = Clocks(wall=1_000_000.3)
    schedule = clocks.schedule(1)
    slots = []
    for took in (0.1, 0.75, 0.02, 0.6):
        slot = schedule.next()
        slots.append(slot)
        clocks.monotonic = slot.deadline + took  # the round ran at its deadline
        clocks.wall = slot.wall + took

    assert [s.wall for s in slots] == [1_000_001.0, 1_000_002.0, 1_000_003.0, 1_000_004.0]
    assert [s.deadline for s in slots] == pytest.approx([500.7, 501.7, 502.7, 503.7])
    assert all(s.skipped == 0 for s in slots)


def test_a_round_slightly_late_runs_late_and_one_far_behind_skips_slots() -> None:
    clocks = Clocks(wall=1_000_000.0)
    schedule = clocks.schedule(1)
    first = schedule.next()

    clocks.advance(1.4)  # the next slot was due 0.4 s ago: run it now
    late = schedule.next()
    clocks.advance(2.9)  # two slots passed; the third was due 0.3 s ago
    after_stall = schedule.next()

    assert (late.wall - first.wall, late.skipped) == (1.0, 0)
    assert (after_stall.wall - late.wall, after_stall.skipped) == (3.0, 2)
    assert clocks.monotonic - after_stall.deadline == pytest.approx(0.3)


def test_a_jump_of_the_wall_clock_re_aligns_the_slots() -> None:
    clocks = Clocks(wall=1_000_000.0)
    schedule = clocks.schedule(5)
    schedule.next()

    clocks.wall += 62.0  # stepped by NTP
    clocks.advance(1.0)
    slot = schedule.next()

    assert slot.jumped == 62.0
    assert slot.wall == 1_000_065.0
    assert slot.deadline == clocks.monotonic + 2.0


def test_slots_stay_exact_multiples_of_the_interval() -> None:
    clocks = Clocks(wall=1_795_000_000.05)
    schedule = clocks.schedule(0.6)
    slots = []
    for _ in range(10_000):
        slots.append(schedule.next())
        clocks.monotonic, clocks.wall = slots[-1].deadline, slots[-1].wall

    assert [s.index for s in slots] == list(range(slots[0].index, slots[0].index + 10_000))
    assert all(s.wall == s.index * 0.6 and not s.jumped and not s.skipped for s in slots)
