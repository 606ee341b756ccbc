"""Three upstream keys with hidden concurrency limits of 4, 8 and 12 (answers in 0.5-2 s),
and one key's quota running out mid-run: does the fleet use the sum of the keys, and do
the others absorb the spent key's share without a client error?

Real processes on loopback: a private Redis, the simulator (``--keys``: a cap per key, a
5-hour quota of ``--quota`` requests on the key of 8), one ``zai-proxy limiter`` and
``--replicas`` proxies with the three keys in ``ZAI_API_KEYS``. ``--clients`` closed-loop
clients (default 40, above the 24 slots) send chat completions round-robin over the
replicas, each asking the simulator for a latency drawn uniformly from 0.5-2 s. Every
0.25 s the simulator's own counters are sampled (ground truth): each key's requests in
flight, answers accepted and 429s by code.

Figures: utilisation (mean in flight upstream over the sum of the caps of the keys in
service) and the upstream 429 share (1302s over the attempts) from ``--warmup`` seconds on
until the quota runs out, and again from 5 s after it; the seconds from the spent key's
first 1308 until the others hold 90% of their capacity; every client answer that was not
a 200. Targets (issue 15): utilisation >= 90%, <= 2% upstream 429s, the spent key's share
absorbed within 5 s, no client error.

    .venv/bin/python -m bench.limiter_keys [--seconds 60] [--replicas 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import statistics
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

CAPS = {"alpha": 4, "beta": 8, "gamma": 12}
SPENT = "beta"  # the key whose quota runs out
KEYS = {name: f"sk-bench-{name}-0000" for name in CAPS}
BODY = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
SAMPLE_S = 0.25
ABSORB_S = 5.0


@dataclass
class Sample:
    """The simulator's per-key counters at one moment."""

    at: float
    in_flight: dict[str, int]
    accepted: dict[str, int]
    rejected: dict[str, dict[str, int]]


@dataclass
class Client:
    """What the clients saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[tuple[float, str]] = field(default_factory=list)


def sample(url: str, start: float) -> Sample:
    keys = httpx.get(f"{url}/_sim/stats", timeout=5).json()["keys"]
    return Sample(
        time.monotonic() - start,
        {k: v["in_flight"] for k, v in keys.items()},
        {k: v["accepted"] for k, v in keys.items()},
        {k: v["rejected_429"] for k, v in keys.items()},
    )


async def load(urls: list[str], clients: int, seconds: float, start: float, seen: Client) -> None:
    rng = random.Random(15)
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(index: int) -> None:
            turn = index
            while time.monotonic() - start < seconds:
                url = urls[turn % len(urls)]
                turn += 1
                latency = rng.randint(500, 2000)
                try:
                    async with session.post(
                        f"{url}/v1/chat/completions",
                        json=BODY,
                        headers={"x-sim-latency-ms": str(latency)},
                    ) as response:
                        text = await response.text()
                        seen.statuses[response.status] += 1
                        if response.status != 200:
                            seen.errors.append((time.monotonic() - start, text[:200]))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    seen.errors.append((time.monotonic() - start, repr(exc)))

        await asyncio.gather(*(client(i) for i in range(clients)))


def span(samples: list[Sample]) -> float:
    return samples[-1].at - samples[0].at if len(samples) > 1 else 0.0


def utilisation(samples: list[Sample], keys: list[str]) -> float:
    capacity = sum(CAPS[k] for k in keys)
    return statistics.fmean(sum(s.in_flight.get(k, 0) for k in keys) for s in samples) / capacity


def ratio_429(first: Sample, last: Sample) -> float:
    limited = attempts = 0
    for key in CAPS:
        accepted = last.accepted[key] - first.accepted[key]
        codes = {c: n - first.rejected[key].get(c, 0) for c, n in last.rejected[key].items()}
        limited += codes.get("1302", 0)
        attempts += accepted + sum(codes.values())
    return limited / attempts if attempts else 0.0


def analyse(samples: list[Sample], warmup: float, seen: Client) -> dict[str, Any]:
    spent_at = next((s.at for s in samples if s.rejected[SPENT].get("1308")), None)
    full = [s for s in samples if s.at >= warmup and (spent_at is None or s.at < spent_at)]
    result: dict[str, Any] = {
        "spent_at_s": spent_at,
        "full": {
            "seconds": span(full),
            "utilisation": utilisation(full, list(CAPS)) if full else None,
            "upstream_429_ratio": ratio_429(full[0], full[-1]) if len(full) > 1 else None,
        },
        "client_statuses": dict(seen.statuses),
        "client_errors": seen.errors[:20],
        "client_error_count": len(seen.errors),
        "quota_429s": samples[-1].rejected[SPENT].get("1308", 0),
        "accepted": samples[-1].accepted,
        "rejected": samples[-1].rejected,
    }
    if spent_at is not None:
        others = [k for k in CAPS if k != SPENT]
        after = [s for s in samples if s.at >= spent_at + ABSORB_S]
        # Absorbed: the first moment from which the others' 1-s mean in flight holds 90%.
        absorbed = None
        window = int(1 / SAMPLE_S)
        later = [s for s in samples if s.at >= spent_at]
        for i in range(len(later) - window):
            if utilisation(later[i : i + window], others) >= 0.9:
                absorbed = later[i].at - spent_at
                break
        result["after"] = {
            "seconds": span(after),
            "utilisation": utilisation(after, others) if after else None,
            "upstream_429_ratio": ratio_429(after[0], after[-1]) if len(after) > 1 else None,
            "absorbed_in_s": absorbed,
        }
    return result


def run(args: argparse.Namespace, log: Path) -> dict[str, Any]:
    spec = {name: {"key": KEYS[name], "max_concurrency": cap} for name, cap in CAPS.items()}
    spec[SPENT]["quota_requests"] = f"5h={args.quota}"
    keys = ",".join(f"{name}:{key}" for name, key in KEYS.items())
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(private_redis(log))
        shared = limiter_env(redis_url, "bench", {"ZAI_API_KEYS": keys, "ZAI_API_KEY": ""})
        control = stack.enter_context(limiter(shared, log))
        sim = stack.enter_context(simulator(free_port(), ["--keys", json.dumps(spec)]))
        only_keys = {"ZAI_API_KEY": ""}  # proxies() gives a ZAI_API_KEY of its own
        replicas = stack.enter_context(proxies(args.replicas, sim.url, shared, only_keys, log))
        start = time.monotonic()
        samples: list[Sample] = []
        done = threading.Event()

        def sampler() -> None:
            while not done.is_set():
                samples.append(sample(sim.url, start))
                time.sleep(SAMPLE_S)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        seen = Client()
        asyncio.run(load([r.url for r in replicas], args.clients, args.seconds, start, seen))
        done.set()
        thread.join()
        caps = _caps(httpx.get(f"{control.url}/metrics", timeout=5).text)
    result = analyse(samples, args.warmup, seen)
    result["learned_caps"] = caps
    if args.timeline:
        for s in samples[:: int(1 / SAMPLE_S)]:
            print(f"{s.at:6.1f} s  in flight {s.in_flight}  1302s {_codes(s, '1302')}")
    return result


def _codes(s: Sample, code: str) -> dict[str, int]:
    return {k: v.get(code, 0) for k, v in s.rejected.items()}


def _caps(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.labels["pool"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "limiter_concurrency_limit"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--quota", type=int, default=200, help=f"{SPENT}'s 5-hour quota")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--timeline", action="store_true", help="print each second's counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "bench.log"
        try:
            result = run(args, log)
        except BaseException:
            print(log.read_text(errors="replace")[-4000:])
            raise
    result["machine"] = (
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
