"""When rounds run: on the wall clock's interval boundaries, waited for on the monotonic clock.

Each round is due at a *slot*, a wall-clock time that is a multiple of the interval, and
its snapshots cover the interval that ends there, ``[slot - interval, slot)``. Deadlines
advance by exactly one interval on the monotonic clock, so the cadence does not drift with
the time rounds take, and successive slots never share a snapshot timestamp (a round
labelled by the time it happened to run could land twice in one bucket and overwrite it).

A round that overran its next slot by more than half an interval skips the slots it
missed (counted), rather than running them back to back. When the wall clock jumps (a
step by NTP, a suspended VM) by more than a quarter interval, the slots are re-anchored
to it; after a step back, the snapshots of the slots lived twice replace the first ones
(the store upserts), which loses those few intervals rather than labelling every later
snapshot with a time that has not come yet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Slot:
    """A round's due time: ``deadline`` on the monotonic clock, ``wall`` in epoch seconds."""

    deadline: float
    index: int  # wall = index x interval
    wall: float
    skipped: int = 0  # slots left out before this one
    jumped: float = 0.0  # seconds the wall clock jumped since the last slot


class RoundSchedule:
    """Yields the slot of each next round."""

    def __init__(
        self,
        interval: float,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self.interval = interval
        self._wall = wall
        self._monotonic = monotonic
        self._slot: Slot | None = None

    def next(self) -> Slot:
        """The next slot after the last one returned (the first: the next boundary)."""
        now, wall = self._monotonic(), self._wall()
        last = self._slot
        if last is None:
            slot = self._anchor(now, wall)
        else:
            # How far the wall clock moved apart from the monotonic one since the last slot.
            jumped = (wall - last.wall) - (now - last.deadline)
            if abs(jumped) > self.interval / 4:
                slot = self._anchor(now, wall, jumped)
            else:
                late = now - (last.deadline + self.interval)
                # Run late rather than skip, unless the next-but-one slot is closer.
                skipped = int(late / self.interval + 0.5) if late > self.interval / 2 else 0
                index = last.index + 1 + skipped
                slot = Slot(
                    last.deadline + (1 + skipped) * self.interval,
                    index,
                    index * self.interval,
                    skipped,
                )
        self._slot = slot
        return slot

    def _anchor(self, now: float, wall: float, jumped: float = 0.0) -> Slot:
        # Slots are computed as index x interval, so that no rounding error accumulates.
        index = math.ceil(wall / self.interval)
        boundary = index * self.interval
        return Slot(now + (boundary - wall), index, boundary, 0, jumped)
