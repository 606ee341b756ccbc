"""How the time to settle after a drop depends on where in a control window the drop falls.

The real run (``python -m bench.limiter_sim``) sees one alignment per drop: the simulator's
schedule and the limiter's windows (multiples of RATE_LIMIT_WINDOW on Redis's clock) are
independent. This model replays a drop at every offset into a window, with the real
controller (``zai_proxy.limiter.controller.step``) and an upstream like the simulator's (a
token bucket holding one second of its rate), the proxies' backlog following the rate at
once (acquire.lua's rescaling) and each window stepped ``SETTLE_SECONDS`` after it ends.
Retries, report delays and the GCRA burst are left out. Settle is measured as in the
bench: the first second from which every 3-s 429 ratio stays under 5% for 10 s.

    .venv/bin/python -m bench.limiter_sim.alignment                # 40 -> 20 req/s
    .venv/bin/python -m bench.limiter_sim.alignment --old 60 --new 20
"""

from __future__ import annotations

import argparse
import math

from zai_proxy.limiter.control import SETTLE_SECONDS
from zai_proxy.limiter.controller import ControllerState, RateLimitParams, step
from zai_proxy.limiter.outcomes import Window

TICK = 0.002  # seconds per model step
BEFORE = 60.0  # seconds at the old limit before the drop (a multiple of the window)
AFTER = 40.0


def settle_after_drop(old: float, new: float, offset: float, params: RateLimitParams) -> float:
    """Seconds from a drop ``offset`` s into a window until the 429 ratio is back under 5%."""
    window_s = params.window_seconds
    change = BEFORE + offset
    state = ControllerState(rate=old * (1 - params.hold_margin), concurrency=256.0, ceiling=old)
    tokens, owed = old, 0.0
    windows: dict[int, list[int]] = {}
    seconds: dict[int, list[int]] = {}
    next_step = window_s + SETTLE_SECONDS
    for n in range(int((change + AFTER) / TICK)):
        t = n * TICK
        limit = old if t < change else new
        tokens = min(max(1.0, limit), tokens + limit * TICK)
        owed += state.rate * TICK
        while owed >= 1:  # demand always above the rate: every slot is used
            owed -= 1
            accepted = tokens >= 1
            tokens -= 1 if accepted else 0
            for counts in (
                windows.setdefault(int(t // window_s), [0, 0]),
                seconds.setdefault(int(t), [0, 0]),
            ):
                counts[0 if accepted else 1] += 1
        if t >= next_step:
            ok, refused = windows.get(int((next_step - SETTLE_SECONDS) // window_s) - 1, [0, 0])
            window = Window(ok=ok, rate_frequency=refused, demand=10**9)
            state, _ = step(state, window, params)
            next_step += window_s

    def ratio(a: int) -> float:
        ok = sum(seconds.get(b, [0, 0])[0] for b in range(a, a + 3))
        refused = sum(seconds.get(b, [0, 0])[1] for b in range(a, a + 3))
        return refused / (ok + refused) if ok + refused else 0.0

    for a in range(math.ceil(change), int(change + AFTER) - 13):
        if all(ratio(b) < 0.05 for b in range(a, a + 10)):
            return a - change
    return math.inf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limiter_sim.alignment")
    parser.add_argument("--old", type=float, default=40.0)
    parser.add_argument("--new", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=20, help="offsets per window")
    args = parser.parse_args(argv)
    params = RateLimitParams()
    offsets = [i * params.window_seconds / args.steps for i in range(args.steps)]
    results = [
        (offset, settle_after_drop(args.old, args.new, offset, params)) for offset in offsets
    ]
    print(f"drop {args.old:g} -> {args.new:g} req/s; settle (s) by offset into the window (s):")
    for offset, settle in results:
        print(f"  {offset:4.2f}  {settle:5.2f}")
    values = [settle for _, settle in results]
    print(f"min {min(values):.2f}  mean {sum(values) / len(values):.2f}  max {max(values):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
