"""Clients sharing one learned limit: do they get their fair shares, does a light client
get all it asks for at once, and does interactive traffic go before batch?

Real processes on loopback: a private Redis, the simulator with a hidden concurrency
limit of ``--cap`` (answers in 0.5-1 s, as each request asks), one ``zai-proxy
limiter`` and ``--replicas`` proxies with two client keys in ``PROXY_API_KEYS``. Clients
send chat completions round-robin over the replicas:

- ``equal``: two clients of weight 1, both above their fair share (half the capacity):
  ``heavy`` runs 10x the closed-loop connections of ``light``.
- ``light``: ``heavy`` as above, ``light`` offering 30% of its share (Poisson arrivals).
- ``classes``: ``batch`` (class=batch, closed loop, far above the capacity) and
  ``interactive`` (class=interactive, Poisson at half the capacity).

Ground truth: each client's own answers (a 200 counted in the second it ended, its queue
wait = the time to the answer minus the latency it asked the simulator for) and the
simulator's in-flight count sampled every 0.25 s. Figures over the last ``--measure``
seconds of each scenario: each client's goodput and its share of the total, the
goodput over the capacity, upstream 429s over attempts, and queue wait p50/p99 by
client. Targets (issue 15): fair shares within 10% of each other, a light client served
all it offers with p99 wait <= 1 s, interactive p99 <= 1 s, goodput >= 95%; 1 and 3
replicas the same shares.

    .venv/bin/python -m bench.limiter_fair [--replicas 1] [--scenario equal] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.limiter_sim.processes import (
    free_port,
    limiter,
    limiter_env,
    private_redis,
    proxies,
    simulator,
)

BODY = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
LATENCY_MS = (500, 1000)
MEAN_LATENCY_S = sum(LATENCY_MS) / 2 / 1000
SAMPLE_S = 0.25
KEYS = {name: f"sk-client-{name}-000" for name in ("heavy", "light", "batch", "interactive")}


@dataclass(frozen=True)
class Load:
    """One client's load: closed-loop connections, or Poisson arrivals per second."""

    client: str
    connections: int = 0
    rate: float = 0.0


@dataclass
class Seen:
    """What one client saw."""

    done: list[tuple[float, float]] = field(default_factory=list)  # (end, queue wait) of 200s
    statuses: Counter[int] = field(default_factory=Counter)
    sent: list[float] = field(default_factory=list)  # when each request was sent


def capacity_of(args: argparse.Namespace) -> float:
    """Requests per second the upstream can serve: its rate, or its cap over the latency."""
    return float(args.rate) if args.rate else args.cap / MEAN_LATENCY_S


def scenarios(args: argparse.Namespace) -> dict[str, list[Load]]:
    capacity = capacity_of(args)
    many = 10 * round(capacity * MEAN_LATENCY_S)  # connections: ten times the capacity
    return {
        "equal": [Load("heavy", connections=many), Load("light", connections=many // 10)],
        "light": [Load("heavy", connections=many), Load("light", rate=0.3 * capacity / 2)],
        "classes": [Load("batch", connections=many), Load("interactive", rate=capacity / 2)],
    }


async def run_load(
    urls: list[str], loads: list[Load], seconds: float, start: float
) -> dict[str, Seen]:
    seen = {load.client: Seen() for load in loads}
    rng = random.Random(20)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    turn = iter(range(10**9))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(load: Load) -> None:
            latency = rng.randint(*LATENCY_MS)
            url = urls[next(turn) % len(urls)]
            headers = {
                "authorization": f"Bearer {KEYS[load.client]}",
                "x-sim-latency-ms": str(latency),
            }
            mine = seen[load.client]
            sent = time.monotonic()
            mine.sent.append(sent - start)
            try:
                async with session.post(
                    f"{url}/v1/chat/completions", json=BODY, headers=headers
                ) as response:
                    await response.read()
                    mine.statuses[response.status] += 1
            except (aiohttp.ClientError, TimeoutError):
                mine.statuses[0] += 1
                return
            end = time.monotonic()
            if response.status == 200:
                mine.done.append((end - start, max(0.0, end - sent - latency / 1000)))

        async def closed(load: Load) -> None:
            async def loop() -> None:
                while time.monotonic() - start < seconds:
                    await one(load)

            await asyncio.gather(*(loop() for _ in range(load.connections)))

        async def poisson(load: Load) -> None:
            tasks = set()
            while time.monotonic() - start < seconds:
                await asyncio.sleep(rng.expovariate(load.rate))
                task = asyncio.create_task(one(load))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)

        await asyncio.gather(*(closed(x) if x.connections else poisson(x) for x in loads))
    return seen


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def analyse(
    seen: dict[str, Seen],
    samples: list[tuple[float, int, int, int]],
    capacity: float,
    seconds: float,
    measure: float,
    loads: list[Load],
) -> dict[str, Any]:
    first = seconds - measure
    window = [s for s in samples if s[0] >= first]
    clients: dict[str, Any] = {}
    total = 0.0
    for load in loads:
        mine = seen[load.client]
        done = [(end, wait) for end, wait in mine.done if first <= end <= seconds]
        goodput = len(done) / measure
        total += goodput
        waits = [wait for _, wait in done]
        clients[load.client] = {
            "goodput_rps": round(goodput, 2),
            "load": load.rate or f"{load.connections} connections",
            "offered_rps": round(sum(1 for at in mine.sent if first <= at <= seconds) / measure, 2),
            "wait_p50_s": percentile(waits, 0.5),
            "wait_p99_s": percentile(waits, 0.99),
            "statuses": dict(mine.statuses),
        }
    for figures in clients.values():
        figures["share"] = round(figures["goodput_rps"] / total, 3) if total else None
    accepted = window[-1][2] - window[0][2] if len(window) > 1 else 0
    refused = window[-1][3] - window[0][3] if len(window) > 1 else 0
    return {
        "clients": clients,
        "goodput_of_capacity": round(total / capacity, 3),
        "upstream_429_ratio": round(refused / (accepted + refused), 4) if accepted else None,
    }


def run(args: argparse.Namespace, name: str, loads: list[Load], log: Path) -> dict[str, Any]:
    entries = {
        "heavy": "",
        "light": "",
        "batch": " class=batch",
        "interactive": " class=interactive",
    }
    clients = ",".join(f"{c}:{KEYS[c]}{entries[c]}" for c in entries)
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(private_redis(log))
        shared = limiter_env(redis_url, "bench", {})
        stack.enter_context(limiter(shared, log))
        limit = (
            ["--rate-limit", str(args.rate)] if args.rate else ["--max-concurrency", str(args.cap)]
        )
        sim = stack.enter_context(simulator(free_port(), limit))
        extra = {"PROXY_API_KEYS": clients, "RATE_LIMIT_MAX_WAIT": "60"}
        replicas = stack.enter_context(proxies(args.replicas, sim.url, shared, extra, log))
        start = time.monotonic()
        samples: list[tuple[float, int, int, int]] = []
        stopped = threading.Event()

        def sampler() -> None:
            while not stopped.is_set():
                stats = httpx.get(f"{sim.url}/_sim/stats", timeout=5).json()
                samples.append(
                    (
                        time.monotonic() - start,
                        stats["in_flight"],
                        stats["accepted"],
                        sum(stats["rejected_429"].values()),
                    )
                )
                time.sleep(SAMPLE_S)

        def watcher() -> None:
            import redis

            from zai_proxy.limiter.store import count_flows

            client = redis.Redis.from_url(redis_url, decode_responses=True)
            while not stopped.is_set():
                time.sleep(1.0)
                for key in client.scan_iter(match="bench:{*}:leases"):
                    base = str(key).rpartition(":")[0]
                    held = f"{base}:queued" if args.rate else key  # a rate's: turns ahead
                    leases = [str(m) for m in client.zrange(held, 0, -1)]
                    waiters = [str(m) for m in client.zrange(f"{base}:waiters", 0, -1)]
                    cap = str(client.hget(f"{base}:state", "concurrency"))
                    rate = str(client.hget(f"{base}:state", "rate"))
                    flows = {f.client: (f.held, f.waiting) for f in count_flows(leases, waiters)}
                    upstream = samples[-1][1] if samples else None
                    at = time.monotonic() - start
                    print(f"{at:5.1f} s cap {cap} rate {rate} upstream {upstream}", end=" ")
                    print(f"(held or ahead, waiting) {flows}")

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        if args.watch:
            threading.Thread(target=watcher, daemon=True).start()
        seen = asyncio.run(run_load([r.url for r in replicas], loads, args.seconds, start))
        stopped.set()
        thread.join()
    result = analyse(seen, samples, capacity_of(args), args.seconds, args.measure, loads)
    result["scenario"] = name
    result["replicas"] = args.replicas
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=50.0)
    parser.add_argument("--measure", type=float, default=25.0, help="the last seconds measured")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--cap", type=int, default=12, help="the upstream's hidden limit")
    parser.add_argument(
        "--rate", type=int, default=0, help="a hidden rate limit (req/s) instead of the cap"
    )
    parser.add_argument("--scenario", choices=["equal", "light", "classes", "all"], default="all")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--watch", action="store_true", help="print the store's flows each second")
    args = parser.parse_args()
    chosen = scenarios(args)
    names = list(chosen) if args.scenario == "all" else [args.scenario]
    results = []
    for name in names:
        with tempfile.TemporaryDirectory() as folder:
            log = Path(folder) / "bench.log"
            try:
                results.append(run(args, name, chosen[name], log))
            except BaseException:
                print(log.read_text(errors="replace")[-4000:])
                raise
        print(json.dumps(results[-1], indent=2), flush=True)
    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
