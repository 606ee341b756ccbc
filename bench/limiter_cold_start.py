"""No evidence, no throttle: a fresh proxy at its defaults against the same proxy with its
limiter opened wide, side by side, in front of an upstream that never answers 429.

Each proxy is started with nothing but the upstream key and URL (as a new user starts it;
no Redis, so its in-process limiter), then 32 closed-loop clients send chat completions
for 10 s; the answers are counted per second. Target (issue 17, 1): from 3 s of load on,
the defaults pass at least 80% of what the wide-open limiter passes.

    .venv/bin/python -m bench.limiter_cold_start [--clients 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.limiter_sim.processes import free_port, proxies, simulator

WIDE_OPEN = {
    "RATE_LIMIT_INITIAL": "1000000",
    "RATE_LIMIT_MAX": "1000000",
    "CONCURRENCY_LIMIT_MAX": "1000000",
}
# A Redis in the caller's shell would not be what a new user starts with (empty: unset).
NO_REDIS = {"REDIS_URL": ""}
BODY = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
SETTLE_S = 3


async def answers_per_second(url: str, clients: int, seconds: int) -> list[int]:
    """Answers with status 200 in each second of a closed-loop run of ``clients``."""
    counts = [0] * seconds
    start = time.monotonic()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while time.monotonic() - start < seconds:
                async with session.post(url, json=BODY) as response:
                    await response.read()
                second = int(time.monotonic() - start)
                if response.status == 200 and second < seconds:
                    counts[second] += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return counts


def run(clients: int, seconds: int, log: Path) -> dict[str, list[int]]:
    """Per-second answers of the defaults and of the wide-open limiter, one after the other."""
    results = {}
    with simulator(free_port(), []) as sim:
        for name, extra in (("defaults", {}), ("wide open", WIDE_OPEN)):
            with proxies(1, sim.url, NO_REDIS, extra, log) as (proxy,):
                url = f"{proxy.url}/v1/chat/completions"
                results[name] = asyncio.run(answers_per_second(url, clients, seconds))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.clients, args.seconds, Path(tmp) / "processes.log")
    for name, counts in results.items():
        settled = counts[SETTLE_S:]
        print(f"{name:>9}: {sum(settled) / len(settled):7.0f} answers/s from {SETTLE_S} s; "
              f"per second {counts}")  # fmt: skip
    defaults, wide = results["defaults"], results["wide open"]
    with contextlib.suppress(ZeroDivisionError):
        first = sum(defaults[:SETTLE_S]) / sum(wide[:SETTLE_S])
        after = sum(defaults[SETTLE_S:]) / sum(wide[SETTLE_S:])
        print(f"defaults / wide open: {first:.0%} in the first {SETTLE_S} s, "
              f"{after:.0%} from {SETTLE_S} s on (target: at least 80%)")  # fmt: skip


if __name__ == "__main__":
    main()
