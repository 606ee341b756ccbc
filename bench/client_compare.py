"""Which HTTP client should the proxy use upstream: aiohttp or httpx?

Measures, in one process on uvloop (the proxy's loop), the same small chat-completion
POST sent N times to the simulated upstream by 32 worker tasks sharing one client:

  (a) one ``aiohttp.ClientSession``, built by the proxy's own ``create_session``
      (pool of 32 keep-alive connections, no decompression, no cookie jar);
  (b) one ``httpx.AsyncClient`` (HTTP/1.1, keep-alive pool of 32);
  (c) the same httpx client with the failed ``import sniffio`` cached, when sniffio is not
      installed: httpcore 1.0.x tries that import on every lock and event it creates, and
      a failed import is not cached by Python, so each try walks sys.path again (about a
      quarter of httpx's CPU here). anyio >= 4.5 no longer pulls sniffio in, so this is
      what a fresh install gets; (c) shows httpx without that penalty.

For each: requests per second (wall clock) and client CPU time per request
(``time.process_time``: this process only, the simulator runs in its own). The clients
take turns (a, b, a, b, ...) so drift on a noisy machine hits both; medians of the
repeats are printed with the ratio.

    .venv/bin/python bench/client_compare.py [--requests 20000] [--concurrency 32]
                                             [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass

import httpx
import uvloop

from zai_proxy.proxy.settings import ProxySettings
from zai_proxy.proxy.upstream import create_session
from zai_proxy.simulator.process import start_simulator

CHAT_BODY = json.dumps(
    {
        "model": "glm-4.6",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarise the plot of Hamlet in three sentences."},
        ],
        "max_tokens": 256,
        "temperature": 0.7,
    }
).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
WARMUP_REQUESTS = 1_000

Send = Callable[[], Awaitable[int]]


@dataclass
class Run:
    """One timed run of one client."""

    client: str
    requests: int
    seconds: float
    cpu_seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1e6


async def drive(send: Send, requests: int, concurrency: int) -> None:
    """Send `requests` requests from `concurrency` worker tasks; fail on any non-200."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status = await send()
            if status != 200:
                raise RuntimeError(f"upstream answered {status}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def timed(name: str, send: Send, requests: int, concurrency: int) -> Run:
    """Warm the pool up, then time `requests` requests (wall and CPU)."""
    await drive(send, WARMUP_REQUESTS, concurrency)
    wall, cpu = time.perf_counter(), time.process_time()
    await drive(send, requests, concurrency)
    return Run(name, requests, time.perf_counter() - wall, time.process_time() - cpu)


async def run_aiohttp(url: str, requests: int, concurrency: int) -> Run:
    """The proxy's own aiohttp session, sized to `concurrency` connections."""
    session = create_session(ProxySettings(max_workers=concurrency))

    async def send() -> int:
        async with session.post(url, data=CHAT_BODY, headers=HEADERS) as response:
            await response.read()
            return response.status

    try:
        return await timed("aiohttp", send, requests, concurrency)
    finally:
        await session.close()


async def run_httpx(url: str, requests: int, concurrency: int) -> Run:
    """One httpx.AsyncClient over HTTP/1.1 with a keep-alive pool of `concurrency`."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = httpx.AsyncClient(http1=True, http2=False, limits=limits, timeout=30.0)

    async def send() -> int:
        response = await client.post(url, content=CHAT_BODY, headers=HEADERS)
        return response.status_code

    try:
        return await timed("httpx", send, requests, concurrency)
    finally:
        await client.aclose()


@contextlib.contextmanager
def sniffio_miss_cached() -> Iterator[None]:
    """Make `import sniffio` fail fast (a None entry in sys.modules) while inside."""
    if importlib.util.find_spec("sniffio") is not None or "sniffio" in sys.modules:
        yield
        return
    sys.modules["sniffio"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        del sys.modules["sniffio"]


async def run_httpx_cached(url: str, requests: int, concurrency: int) -> Run:
    """httpx as in run_httpx, without the repeated failing sniffio import."""
    with sniffio_miss_cached():
        run = await run_httpx(url, requests, concurrency)
    run.client = "httpx-nosniff"
    return run


RUNNERS = {"aiohttp": run_aiohttp, "httpx": run_httpx, "httpx-nosniff": run_httpx_cached}


def median_of(runs: list[Run], client: str) -> dict[str, float]:
    """Median req/s and CPU µs per request of one client's runs."""
    mine = [run for run in runs if run.client == client]
    return {
        "rps": statistics.median(run.rps for run in mine),
        "cpu_us_per_request": statistics.median(run.cpu_us_per_request for run in mine),
    }


def print_table(medians: dict[str, dict[str, float]], repeats: int) -> None:
    """One line per client, with its req/s and CPU per request relative to aiohttp."""
    base = medians["aiohttp"]
    print(f"\nmedian of {repeats} runs")
    header = ("client", "req/s", "CPU µs/req", "req/s vs aiohttp", "CPU vs aiohttp")
    print("{:<15}{:>8}{:>12}{:>18}{:>16}".format(*header))
    for name, m in medians.items():
        rps, cpu = m["rps"], m["cpu_us_per_request"]
        print(
            f"{name:<15}{rps:>8.0f}{cpu:>12.1f}"
            f"{rps / base['rps']:>17.2f}x{cpu / base['cpu_us_per_request']:>15.2f}x"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs: list[Run] = []
    with start_simulator() as sim:
        url = f"{sim.url}/api/paas/v4/chat/completions"
        print(f"simulator at {sim.url}; {args.requests} requests, concurrency {args.concurrency}")
        for repeat in range(args.repeats):
            for name, runner in RUNNERS.items():
                run = uvloop.run(runner(url, args.requests, args.concurrency))
                runs.append(run)
                print(
                    f"  run {repeat + 1} {name:<8} {run.rps:8.0f} req/s "
                    f"{run.cpu_us_per_request:7.1f} CPU µs/req",
                    flush=True,
                )
    medians = {name: median_of(runs, name) for name in RUNNERS}
    print_table(medians, args.repeats)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"runs": [asdict(r) for r in runs], "medians": medians}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
