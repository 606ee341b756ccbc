"""Soak: mixed traffic with faults through the whole cluster; memory, descriptors and Redis
keys must stay flat.

Starts real processes on loopback: the simulated upstream, two proxy replicas and the
limiter sharing a Redis (``--redis-url``, else REDIS_URL, else redis://127.0.0.1:6379/0)
under a private key prefix (``soak-<random>``, deleted at the end), and the collector
scraping both proxies and the limiter into a temporary SQLite file. The processes are
started with bench/limiter_sim/processes.py's helpers; memory and the collector's figures
are read with bench/collector_soak.py's.

Then, for ``--duration`` seconds (default 1800), an asyncio httpx client sends about
``--rate`` requests/s (default 60) at most ``--concurrency`` at once (default 48), spread
over the replicas: OpenAI and Anthropic dialects, plain and streamed, and faults scripted
with the simulator's x-sim-* headers. Each kind has one expected answer; anything else
(a proxy 500, a transport error, a request hung for 60 s) is an *unexpected* error:

  plain, streamed      200, complete (a JSON answer; a stream with its end event)
  slow                 200 and complete after 0.2-1.2 s of upstream latency
  client_disconnect    the client reads two events of a stream, then hangs up
  429_quota            1308/1310: 429 passed on with its code, not retried
  429_retried          a 1302/1305/1312 429 on the first attempt, 200 after a retry
  429_exhausted        1305/1312 on every attempt: the last 429 passed on with its code
  5xx                  500/502/503: passed on untouched (no x-proxy-error header)
  reset_stream         the upstream drops a stream after 1-3 events: 200, ended without
                       its end event
  reset_plain          the upstream drops a plain answer mid-body: 502 upstream_unavailable
  stall                a stream falls silent past UPSTREAM_READ_TIMEOUT (2 s): 200, ended

The limiter's bounds are held above the load (RATE_LIMIT_MIN, CONCURRENCY_LIMIT_MIN), so
the scripted 429s exercise the controller and the Redis outcome counters without ever
holding a request back: a proxy-made 429 is unexpected too.

Every ``--interval`` seconds (default duration/40, within 2..10 s) it samples each
process's VmRSS (/proc/<pid>/status) and open descriptors (/proc/<pid>/fd), the keys
under the prefix (SCAN MATCH prefix*) and the members they hold, each proxy's number of
exposed metric series, and the requests so far. When the load ends it waits (up to 30 s)
for the descriptors to settle. It then drops the warm-up (``--warmup``, default the
larger of 30 s and 20% of the run), fits a least-squares slope to the rest of each series
and compares the median of its first third to the median of its last third.

Pass/fail (exit 1 on any failure, a service that exits during the run included; 2 if
the run itself could not be made):

  RSS          per proxy, the limiter and the collector: growth after warm-up (last-third
               median - first-third median, and the fitted slope x the measured span)
               below min(10 MB, 5% of the post-warm-up start); and per proxy, the slope
               of its RSS against the requests it served below 0.75 KB per request. The
               first catches slow leaks in long runs (0.13 KB per request over 30
               minutes), the second a per-request leak in the 2-minute run, where 2 KB
               per request adds only ~4 MB per proxy between the thirds (below the
               first limit). Measured here: warm proxies grow 0.03-0.12 KB per request
               in 2 minutes; a leak injected into the proxies (a bytearray kept per
               request) reads 0.98 KB/request for 1 KB and 2.2 KB/request for 2 KB.
  descriptors  per process: the last-third median at most 8 above the first-third
               median, and within 8 of the post-warm-up start once the load has ended
               (idle keep-alive connections are allowed to close first).
  Redis        at most the key schema's bound at any time (zai_proxy.limiter.keys: 7
               fixed keys and one counter hash per tick for the tick TTL, plus 2),
               every key but ``bounds`` (operator configuration) carries a TTL, and once
               the tick keys have turned over (after the tick TTL) the count and the
               members do not grow.
  requests     no unexpected answer at all.

The simulator's memory is printed but not judged (it keeps bounded request records).

    .venv/bin/python bench/soak.py                         # 30 minutes
    .venv/bin/python bench/soak.py --duration 120 --json   # the CI run (tests/reliability)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from collector_soak import collector_figures, memory  # bench/ is sys.path[0] as a script
from limiter_sim import processes
from redis.asyncio import Redis

from zai_proxy.simulator.process import SimulatorProcess, start_simulator

# Thresholds (see the docstring).
RSS_GROWTH_MB = 10.0
RSS_GROWTH_SHARE = 0.05
RSS_PER_REQUEST_KB = 0.75  # slope of a proxy's RSS against the requests it served
FD_GROWTH = 8
REDIS_FIXED_KEYS = 7  # state, bounds, tat, leases, replicas, pools, leader
REDIS_KEY_SLACK = 2
REDIS_MEMBER_GROWTH = 0.25  # share of the first-third median, plus REDIS_MEMBER_SLACK
REDIS_MEMBER_SLACK = 20
KEYS_WITHOUT_TTL = (":bounds",)  # operator configuration, see zai_proxy.limiter.keys

TICK_S = 0.25  # RATE_LIMIT_TICK (the default), set explicitly so that the key bound is known
TICK_TTL_S = max(60.0, 8 * TICK_S)  # LimiterSettings.store_config()
READ_TIMEOUT_S = 2.0  # UPSTREAM_READ_TIMEOUT: what the stall kind runs into
CLIENT_TIMEOUT_S = 30.0  # between two reads
HUNG_S = 60.0  # a whole exchange longer than this is a hung request
SETTLE_S = 30.0
MODELS = ("glm-4.6", "glm-4.5-air", "glm-4.5")
ANTHROPIC_VERSION = "2023-06-01"

# Weights of the kinds of traffic: a third are slow, cut off or faulty.
KINDS: dict[str, float] = {
    "plain": 30,
    "streamed": 26,
    "slow": 8,
    "client_disconnect": 5,
    "429_quota": 2,
    "429_retried": 2,
    "429_exhausted": 1,
    "5xx": 3,
    "reset_stream": 3,
    "reset_plain": 1.5,
    "stall": 1,
}
# What each kind must get, for the report (make_request() scripts it, verdict() checks it).
EXPECTED = {
    "plain": "200 complete",
    "streamed": "200 complete",
    "slow": "200 complete",
    "client_disconnect": "hung up after 2 events",
    "429_quota": "429 with its code",
    "429_retried": "200 complete",
    "429_exhausted": "429 with its code",
    "5xx": "the same 5xx",
    "reset_stream": "200 cut short",
    "reset_plain": "502 proxy",
    "stall": "200 cut short",
}
STREAMED = frozenset({"streamed", "client_disconnect", "reset_stream", "stall"})
PLAIN = frozenset({"plain", "reset_plain"})  # the other kinds: either, at random

# Shared by the proxies and the limiter: bounds above the load, so that the scripted 429s
# are learnt from but never hold a request back.
LIMITER_ENV = {
    "RATE_LIMIT_INITIAL": "2000",
    "RATE_LIMIT_MIN": "1000",
    "RATE_LIMIT_MAX": "10000",
    "RATE_LIMIT_TICK": str(TICK_S),
    "CONCURRENCY_LIMIT_MIN": "512",
    "CONCURRENCY_LIMIT_MAX": "512",
}
# The proxies' upstream key: no answer and no log line may ever show it.
UPSTREAM_KEY = "sk-soak-upstream-4c1f9e27b3d8"
PROXY_ENV = {
    "ZAI_API_KEY": UPSTREAM_KEY,
    "MAX_RETRIES": "2",
    "RETRY_BACKOFF_BASE": "0.05",
    "RETRY_BACKOFF_MAX": "0.5",
    "UPSTREAM_READ_TIMEOUT": str(READ_TIMEOUT_S),
    "UPSTREAM_CONNECT_TIMEOUT": "2",
    "ACCESS_LOG": "true",  # batched access log on, as in production
}


class ServiceDied(Exception):
    """A service process exited during the run: a failure of the soak, not of its set-up."""


# --- traffic ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request of a kind, and the answer it must get."""

    kind: str
    dialect: str  # "openai" | "anthropic"
    stream: bool
    headers: dict[str, str]
    status: int = 200
    complete: bool | None = True  # None: not checked
    code: str | None = None  # a provider error code the body must carry
    proxy_error: str | None = None  # x-proxy-error; None: must be absent

    def path(self) -> str:
        return "/v1/chat/completions" if self.dialect == "openai" else "/v1/messages"

    def body(self, rng: random.Random) -> dict[str, Any]:
        messages = [{"role": "user", "content": "soak " * rng.randint(1, 40)}]
        body: dict[str, Any] = {"model": rng.choice(MODELS), "messages": messages}
        if self.dialect == "anthropic":
            body["max_tokens"] = 512
        if self.stream:
            body["stream"] = True
            if self.dialect == "openai":
                body["stream_options"] = {"include_usage": True}
        return body


def make_request(kind: str, rng: random.Random) -> Request:
    """A request of ``kind`` in a random dialect, with its fault scripted in x-sim-* headers."""
    dialect = rng.choice(("openai", "anthropic"))
    headers = {
        "x-request-id": uuid.uuid4().hex,
        "x-sim-completion-tokens": str(rng.randint(5, 400)),
    }
    stream = kind in STREAMED or (kind not in PLAIN and rng.random() < 0.5)
    shape = "anthropic" if dialect == "anthropic" else rng.choice(("openai", "flat"))
    if stream:
        headers["x-sim-chunks"] = str(rng.randint(3, 8))
        headers["x-sim-chunk-gap-ms"] = str(rng.randint(5, 30))
    if kind in ("plain", "streamed"):
        return Request(kind, dialect, stream, headers)
    if kind == "slow":
        headers["x-sim-latency-ms"] = str(rng.randint(200, 1200))
        return Request(kind, dialect, stream, headers)
    if kind == "client_disconnect":
        headers.update({"x-sim-chunks": "20", "x-sim-chunk-gap-ms": "25"})
        return Request(kind, dialect, stream, headers, complete=None)
    if kind == "429_quota":
        code = rng.choice(("1308", "1310"))
        headers.update({"x-sim-zai-code": code, "x-sim-error-shape": shape})
        return Request(kind, dialect, stream, headers, status=429, complete=None, code=code)
    if kind == "429_retried":
        code = rng.choice(("1302", "1305", "1312"))
        key = headers["x-request-id"]
        headers.update({"x-sim-zai-code": code, "x-sim-error-shape": shape})
        headers.update({"x-sim-fail-first": "1", "x-sim-key": key})
        return Request(kind, dialect, stream, headers)
    if kind == "429_exhausted":
        code = rng.choice(("1305", "1312"))
        headers.update({"x-sim-zai-code": code, "x-sim-error-shape": shape})
        return Request(kind, dialect, stream, headers, status=429, complete=None, code=code)
    if kind == "5xx":
        status = rng.choice((500, 502, 503))
        headers["x-sim-status"] = str(status)
        return Request(kind, dialect, stream, headers, status=status, complete=None)
    if kind == "reset_stream":
        headers["x-sim-break-after"] = str(rng.randint(1, 3))
        return Request(kind, dialect, stream, headers, complete=False)
    if kind == "reset_plain":
        headers["x-sim-break-after"] = "40"
        return Request(
            kind,
            dialect,
            stream,
            headers,
            status=502,
            complete=None,
            proxy_error="upstream_unavailable",
        )
    if kind == "stall":
        gap = int(READ_TIMEOUT_S * 1000 * 1.5)
        headers.update({"x-sim-chunks": "3", "x-sim-chunk-gap-ms": str(gap)})
        return Request(kind, dialect, stream, headers, complete=False)
    raise ValueError(f"unknown kind {kind!r}")


def is_complete(request: Request, text: str) -> bool:
    """Whether an answer is whole: a stream with its end event, a JSON answer with content."""
    if request.stream:
        return ("data: [DONE]" if request.dialect == "openai" else "event: message_stop") in text
    try:
        answer = json.loads(text)
    except ValueError:
        return False
    return (
        isinstance(answer, dict)
        and ("choices" if request.dialect == "openai" else "content") in answer
    )


def verdict(request: Request, response: httpx.Response, text: str) -> str | None:
    """None if the answer is the one expected for its kind, else what was wrong."""
    proxy_error = response.headers.get("x-proxy-error")
    found = f"{response.status_code} x-proxy-error={proxy_error}: {text[:160]!r}"
    if UPSTREAM_KEY in text or UPSTREAM_KEY in str(response.headers):
        return f"the upstream key in the answer: {found}"
    if response.status_code != request.status:
        return f"status {found}"
    if proxy_error != request.proxy_error:
        return f"x-proxy-error {found}"
    if request.code is not None and request.code not in text:
        return f"no code {request.code} in {found}"
    if request.complete is not None and is_complete(request, text) != request.complete:
        return f"{'incomplete' if request.complete else 'not truncated'} {found}"
    if request.complete is False and "data:" not in text:
        return f"no event before the reset: {found}"
    return None


async def exchange(
    client: httpx.AsyncClient, base: str, request: Request, body: dict
) -> str | None:
    """Send one request and read its answer as its kind says; None if it was as expected."""
    url = base + request.path()
    headers = {**request.headers}
    if request.dialect == "anthropic":
        headers["anthropic-version"] = ANTHROPIC_VERSION
    if request.kind == "client_disconnect":
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                return f"status {response.status_code} before the disconnect"
            events = 0
            async for line in response.aiter_lines():
                events += line.startswith("data:")
                if events == 2:
                    return None  # leaving the block closes the connection mid-stream
            return "the stream ended before the client hung up"
    if request.stream:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            text = (await response.aread()).decode("utf-8", errors="replace")
    else:
        response = await client.post(url, json=body, headers=headers)
        text = response.text
    return verdict(request, response, text)


@dataclass
class Tally:
    """Requests so far: sent and unexpected by kind, and a few unexpected answers."""

    sent: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)  # by proxy URL
    unexpected: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    behind: int = 0  # requests sent late because every slot was busy

    def record(self, kind: str, base: str, problem: str | None) -> None:
        self.sent[kind] += 1
        self.served[base] += 1
        if problem is not None:
            self.unexpected[kind] += 1
            if len(self.examples) < 20:
                self.examples.append(f"{kind}: {problem}")


async def one(
    client: httpx.AsyncClient, base: str, kind: str, rng: random.Random, tally: Tally
) -> None:
    request = make_request(kind, rng)
    body = request.body(rng)
    try:
        problem = await asyncio.wait_for(exchange(client, base, request, body), HUNG_S)
    except (TimeoutError, httpx.TimeoutException) as exc:
        problem = f"hung ({type(exc).__name__}) {request.headers}"
    except httpx.HTTPError as exc:
        problem = f"transport error {type(exc).__name__}: {exc} {request.headers}"
    tally.record(kind, base, problem)


async def drive(
    bases: list[str], rate: float, concurrency: int, seconds: float, seed: int, tally: Tally
) -> None:
    """About ``rate`` requests/s for ``seconds``, at most ``concurrency`` at once."""
    rng = random.Random(seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(CLIENT_TIMEOUT_S, connect=5.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        started = time.monotonic()
        due = started
        count = 0
        while due < started + seconds:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 1.0:  # every slot was busy for a while: do not burst after
                tally.behind += 1
                due = now
            due += 1.0 / rate
            await slots.acquire()
            kind = rng.choices(kinds, weights)[0]
            task = asyncio.create_task(one(client, bases[count % len(bases)], kind, rng, tally))
            count += 1
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: slots.release())
        await asyncio.gather(*running)


# --- sampling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Watched:
    """A process whose memory and descriptors are sampled."""

    name: str
    pid: int
    judged: bool = True


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def redis_figures(redis: Redis, prefix: str) -> tuple[int, int, list[str], list[str]]:
    """Keys under the prefix, the members (hash fields, zset members) they hold, the keys
    without a TTL, and the kinds of key."""
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
            pipe.ttl(key)
        found = await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for key, kind in zip(keys, found[::2], strict=True):
            {"hash": pipe.hlen, "zset": pipe.zcard}.get(kind.decode(), pipe.exists)(key)
        members = sum(await pipe.execute())
    without_ttl = [key.decode() for key, ttl in zip(keys, found[1::2], strict=True) if ttl == -1]
    return len(keys), members, without_ttl, families(keys)


def families(keys: list[bytes]) -> list[str]:
    """Key names with the tick index written as ``*``: what kinds of key there are."""
    names = {key.decode() for key in keys}
    return sorted({name.rsplit(":", 1)[0] + ":*" if ":t:" in name else name for name in names})


async def metric_series(client: httpx.AsyncClient, url: str) -> int:
    text = (await client.get(f"{url}/metrics", timeout=5)).text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


@dataclass
class Sampler:
    """Takes one row of figures of the running cluster."""

    watched: list[Watched]
    redis: Redis
    prefix: str
    client: httpx.AsyncClient
    proxy_urls: list[str]
    began: float
    tally: Tally

    async def take(self) -> dict[str, Any]:
        """One row of figures."""
        row: dict[str, Any] = {"t": round(time.monotonic() - self.began, 2)}
        for process in self.watched:
            row[f"{process.name}.rss_mb"] = round(memory(process.pid)["VmRSS"], 2)
            row[f"{process.name}.fds"] = open_fds(process.pid)
        keys, members, without_ttl, kinds = await redis_figures(self.redis, self.prefix)
        row["redis.keys"], row["redis.members"], row["redis.families"] = keys, members, kinds
        row["redis.without_ttl"] = [k for k in without_ttl if not k.endswith(KEYS_WITHOUT_TTL)]
        for index, url in enumerate(self.proxy_urls):
            row[f"proxy-{index}.series"] = await metric_series(self.client, url)
            row[f"proxy-{index}.requests"] = self.tally.served[url]
        row["requests"] = sum(self.tally.sent.values())
        row["unexpected"] = sum(self.tally.unexpected.values())
        return row


async def run_load(
    args: argparse.Namespace,
    watched: list[Watched],
    children: list[processes.Service],
    proxy_urls: list[str],
    prefix: str,
) -> tuple[list[dict[str, Any]], dict[str, Any], Tally]:
    """The load and the sampler side by side; then the settled figures once the load ends."""
    tally = Tally()
    rows: list[dict[str, Any]] = []
    redis = Redis.from_url(args.redis_url)
    began = time.monotonic()
    try:
        async with httpx.AsyncClient() as client:
            sampler = Sampler(watched, redis, prefix, client, proxy_urls, began, tally)
            rows.append(await sampler.take())
            rows[0]["idle"] = True
            load = asyncio.create_task(
                drive(proxy_urls, args.rate, args.concurrency, args.duration, args.seed, tally)
            )
            next_at = began + args.interval
            while not load.done():
                await asyncio.wait({load}, timeout=max(0.0, next_at - time.monotonic()))
                if load.done():
                    break
                next_at += args.interval
                for child in children:
                    if child.process.poll() is not None:
                        load.cancel()
                        raise ServiceDied(f"{child.name} exited with {child.process.returncode}")
                row = await sampler.take()
                rows.append(row)
                progress(row, watched)
            await load
            settled = await settle(sampler, rows, args.warmup)
    finally:
        await redis.aclose()
    return rows, settled, tally


async def settle(sampler: Sampler, rows: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """Once the load has ended: a sample as soon as every descriptor count is back within
    FD_GROWTH of its post-warm-up start (idle keep-alive connections close), or after
    SETTLE_S."""
    ended = time.monotonic()
    watched = sampler.watched
    starts = {p.name: post_warmup(rows, warmup)[0][f"{p.name}.fds"] for p in watched}
    while True:
        row = await sampler.take()
        back = all(row[f"{p.name}.fds"] <= starts[p.name] + FD_GROWTH for p in watched)
        if back or time.monotonic() - ended > SETTLE_S:
            row["settle_s"] = round(time.monotonic() - ended, 1)
            return row
        await asyncio.sleep(1.0)


def post_warmup(rows: list[dict[str, Any]], warmup: float) -> list[dict[str, Any]]:
    """Samples under load after the warm-up (at least two)."""
    loaded = [row for row in rows if not row.get("idle")]
    kept = [row for row in loaded if row["t"] >= warmup]
    return kept if len(kept) >= 2 else loaded[-2:]


def progress(row: dict[str, Any], watched: list[Watched]) -> None:
    figures = "  ".join(
        f"{p.name} {row[f'{p.name}.rss_mb']:.1f}MB/{row[f'{p.name}.fds']}fd" for p in watched
    )
    print(
        f"t={row['t']:7.1f}s  req={row['requests']:6d}  unexpected={row['unexpected']}  "
        f"keys={row['redis.keys']}  {figures}",
        file=sys.stderr,
        flush=True,
    )


# --- analysis ---------------------------------------------------------------------------


def trend(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Start, end, max, third-to-third growth and slope per hour of one series."""
    times = [row["t"] for row in rows]
    values = [float(row[key]) for row in rows]
    third = max(1, len(values) // 3)
    slope = 0.0
    if len(set(times)) > 1:
        slope = statistics.linear_regression(times, values).slope * 3600
    return {
        "start": values[0],
        "end": values[-1],
        "max": max(values),
        "first_third": statistics.median(values[:third]),
        "last_third": statistics.median(values[-third:]),
        "growth": statistics.median(values[-third:]) - statistics.median(values[:third]),
        "slope_per_hour": slope,
        "span_s": times[-1] - times[0],
    }


def judge(
    rows: list[dict[str, Any]], settled: dict[str, Any], watched: list[Watched], warmup: float
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Per-process and Redis figures, and every threshold that was crossed."""
    problems: list[str] = []
    kept = post_warmup(rows, warmup)
    idle = rows[0]
    summary: dict[str, Any] = {}
    for process in watched:
        rss = trend(kept, f"{process.name}.rss_mb")
        fds = trend(kept, f"{process.name}.fds")
        rss["idle"] = idle[f"{process.name}.rss_mb"]
        rss["max"] = max(row[f"{process.name}.rss_mb"] for row in rows)
        rss["settled"] = settled[f"{process.name}.rss_mb"]
        fds["idle"] = idle[f"{process.name}.fds"]
        fds["max"] = max(row[f"{process.name}.fds"] for row in rows)
        fds["settled"] = settled[f"{process.name}.fds"]
        limit = min(RSS_GROWTH_MB, RSS_GROWTH_SHARE * rss["start"])
        fitted = rss["slope_per_hour"] * rss["span_s"] / 3600
        rss["limit"] = limit
        mine: list[str] = []
        if rss["growth"] > limit:
            mine.append(f"RSS grew {rss['growth']:.1f} MB (third to third) > {limit:.1f} MB")
        if fitted > limit:
            mine.append(
                f"RSS slope {rss['slope_per_hour']:.1f} MB/h: {fitted:.1f} MB > {limit:.1f}"
            )
        key = f"{process.name}.requests"  # proxies only
        served = [float(row[key]) for row in kept if key in row]
        if len(set(served)) > 1:
            values = [row[f"{process.name}.rss_mb"] for row in kept]
            rss["kb_per_request"] = statistics.linear_regression(served, values).slope * 1024
            if rss["kb_per_request"] > RSS_PER_REQUEST_KB:
                mine.append(
                    f"RSS grew {rss['kb_per_request']:.2f} KB per request served "
                    f"> {RSS_PER_REQUEST_KB} KB"
                )
        if fds["growth"] > FD_GROWTH:
            mine.append(f"descriptors grew by {fds['growth']:.0f} (third to third) > {FD_GROWTH}")
        if fds["settled"] > fds["start"] + FD_GROWTH:
            mine.append(
                f"descriptors {fds['settled']:.0f} after the load > start {fds['start']:.0f} "
                f"+ {FD_GROWTH}"
            )
        if not process.judged:
            mine = []
        problems += [f"{process.name}: {problem}" for problem in mine]
        summary[process.name] = {"pid": process.pid, "rss_mb": rss, "fds": fds, "ok": not mine}

    bound = REDIS_FIXED_KEYS + math.ceil(TICK_TTL_S / TICK_S) + 1 + REDIS_KEY_SLACK
    turned = [row for row in kept if row["t"] >= TICK_TTL_S + 2 * TICK_S]
    keys = trend(kept, "redis.keys")
    members = trend(kept, "redis.members")
    keys["max"] = max(row["redis.keys"] for row in rows)
    members["max"] = max(row["redis.members"] for row in rows)
    without_ttl = sorted({key for row in [*rows, settled] for key in row["redis.without_ttl"]})
    mine = []
    if keys["max"] > bound:
        mine.append(f"{keys['max']:.0f} keys > the schema's bound {bound}")
    if without_ttl:
        mine.append(f"keys without a TTL: {without_ttl}")
    turned_over = len(turned) >= 6
    if turned_over:
        after = trend(turned, "redis.keys")
        if after["growth"] > REDIS_KEY_SLACK:
            mine.append(f"keys grew by {after['growth']:.0f} after the tick TTL")
        after = trend(turned, "redis.members")
        allowed = REDIS_MEMBER_GROWTH * after["first_third"] + REDIS_MEMBER_SLACK
        if after["growth"] > allowed:
            mine.append(f"members grew by {after['growth']:.0f} > {allowed:.0f} after the TTL")
    problems += [f"redis: {problem}" for problem in mine]
    redis = {
        "keys": keys,
        "members": members,
        "bound": bound,
        "without_ttl": without_ttl,
        "families": sorted({name for row in rows for name in row["redis.families"]}),
        "growth_judged": turned_over,
        "ok": not mine,
    }
    return summary, redis, problems


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def table(result: dict[str, Any]) -> str:
    """The report, side by side."""
    lines = [
        f"soak: {result['duration_s']:.0f} s at {result['rate']:g} req/s "
        f"(achieved {result['requests']['rate']:.1f}), warm-up {result['warmup_s']:.0f} s, "
        f"samples every {result['interval_s']:g} s; {result['machine']['nproc']} x "
        f"{result['machine']['cpu']}, load {result['machine']['loadavg']} -> "
        f"{result['loadavg_end']}",
        "",
        f"{'process':<11}{'RSS MB idle':>12}{'start':>8}{'end':>8}{'max':>8}{'growth':>8}"
        f"{'limit':>7}{'MB/h':>8}{'KB/req':>8}   {'fds idle':>8}{'start':>6}{'end':>5}{'max':>5}"
        f"{'settled':>8}  ok",
    ]
    for name, figures in result["processes"].items():
        rss, fds = figures["rss_mb"], figures["fds"]
        per_request = f"{rss['kb_per_request']:+8.3f}" if "kb_per_request" in rss else f"{'-':>8}"
        lines.append(
            f"{name:<11}{rss['idle']:12.1f}{rss['start']:8.1f}{rss['end']:8.1f}{rss['max']:8.1f}"
            f"{rss['growth']:+8.2f}{rss['limit']:7.1f}{rss['slope_per_hour']:+8.1f}{per_request}   "
            f"{fds['idle']:8.0f}{fds['start']:6.0f}{fds['end']:5.0f}{fds['max']:5.0f}"
            f"{fds['settled']:8.0f}  {'yes' if figures['ok'] else 'NO'}"
        )
    redis = result["redis"]
    keys, members = redis["keys"], redis["members"]
    lines += [
        "",
        f"redis {result['redis_prefix']}:*  keys start {keys['start']:.0f} end {keys['end']:.0f} "
        f"max {keys['max']:.0f} (bound {redis['bound']}), members start {members['start']:.0f} "
        f"end {members['end']:.0f} max {members['max']:.0f}; growth judged after the tick "
        f"TTL: {'yes' if redis['growth_judged'] else 'no (run too short)'}; "
        f"{'ok' if redis['ok'] else 'NOT OK'}",
        "redis keys seen: " + ", ".join(redis["families"]),
        "proxy metric series: "
        + ", ".join(
            f"{name} {s['start']:.0f} -> {s['end']:.0f}" for name, s in result["series"].items()
        ),
        "collector: " + ", ".join(f"{k} {v:g}" for k, v in result["collector"].items()),
        "",
        f"{'kind':<19}{'expected answer':<25}{'sent':>8}{'as expected':>13}{'unexpected':>12}",
    ]
    requests = result["requests"]
    for kind in KINDS:
        sent, unexpected = requests["sent"].get(kind, 0), requests["unexpected"].get(kind, 0)
        lines.append(
            f"{kind:<19}{EXPECTED[kind]:<25}{sent:8d}{sent - unexpected:13d}{unexpected:12d}"
        )
    total, unexpected = requests["total"], requests["unexpected_total"]
    lines.append(f"{'total':<44}{total:8d}{total - unexpected:13d}{unexpected:12d}")
    lines += [f"  unexpected: {example}" for example in requests["examples"]]
    lines += ["", "PASS" if result["passed"] else "FAIL"]
    lines += [f"  {problem}" for problem in result["problems"]]
    return "\n".join(lines)


# --- processes --------------------------------------------------------------------------


@contextlib.contextmanager
def cluster(
    folder: Path, redis_url: str, prefix: str, proxy_env: dict[str, str]
) -> Iterator[
    tuple[SimulatorProcess, list[processes.Service], processes.Service, processes.Service]
]:
    """The simulator, two proxies and the limiter on one Redis prefix, and the collector."""
    log = folder / "services.log"
    shared = processes.limiter_env(redis_url, prefix, LIMITER_ENV)
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(start_simulator("--log-level", "warning"))
        limiter = stack.enter_context(processes.limiter(shared, log))
        replicas = stack.enter_context(
            processes.proxies(2, sim.url, shared, {**PROXY_ENV, **proxy_env}, log)
        )
        port = processes.free_port()
        env = {
            "COLLECTOR_TARGETS": ",".join(replica.url for replica in replicas),
            "COLLECTOR_LIMITER_TARGETS": limiter.url,
            "SCRAPE_INTERVAL": "5",
            "DATABASE_URL": f"sqlite:///{folder / 'rollups.db'}",
            "LOG_LEVEL": "INFO",
        }
        command = [sys.executable, "-m", "zai_proxy", "collector", "--host", "127.0.0.1"]
        collector = stack.enter_context(
            processes.service(
                "collector", [*command, "--port", str(port)], env, port, "/health", log
            )
        )
        yield sim, replicas, limiter, collector


async def delete_keys(redis_url: str, prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


def soak(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    started_machine = machine()
    try:
        proxy_env = dict(item.split("=", 1) for item in args.proxy_env)
        with cluster(folder, args.redis_url, prefix, proxy_env) as (
            sim,
            replicas,
            limiter,
            collector,
        ):
            watched = [Watched(f"proxy-{i}", r.process.pid) for i, r in enumerate(replicas)]
            watched += [
                Watched("limiter", limiter.process.pid),
                Watched("collector", collector.process.pid),
                Watched("simulator", sim.process.pid, judged=False),
            ]
            children = [*replicas, limiter, collector]
            print(
                f"soak {args.duration:g} s, logs in {folder}, redis {prefix}:*",
                file=sys.stderr,
                flush=True,
            )
            rows, settled, tally = asyncio.run(
                run_load(args, watched, children, [r.url for r in replicas], prefix)
            )
            figures = collector_figures(collector.url)
    finally:
        asyncio.run(delete_keys(args.redis_url, prefix))
    processes_summary, redis_summary, problems = judge(rows, settled, watched, args.warmup)
    for row in [*rows, settled]:
        del row["redis.families"]  # summed up in redis_summary
    loaded = [row for row in rows if not row.get("idle")]
    series = {
        f"proxy-{i}": trend(post_warmup(rows, args.warmup), f"proxy-{i}.series")
        for i in range(len(replicas))
    }
    total = sum(tally.sent.values())
    unexpected = sum(tally.unexpected.values())
    if unexpected:
        problems.append(f"requests: {unexpected} unexpected answers")
    if figures.get("dropped"):
        problems.append(f"collector: dropped {figures['dropped']:.0f} snapshots")
    logs = read_logs(folder / "services.log")
    if logs["upstream_key"]:
        problems.append(f"logs: the upstream key in {logs['upstream_key']} lines")
    if logs["tracebacks"]:
        problems.append(f"logs: {logs['tracebacks']} tracebacks")
    return {
        "passed": not problems,
        "problems": problems,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "interval_s": args.interval,
        "rate": args.rate,
        "concurrency": args.concurrency,
        "machine": started_machine,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "thresholds": {
            "rss_growth_mb": RSS_GROWTH_MB,
            "rss_growth_share": RSS_GROWTH_SHARE,
            "rss_per_request_kb": RSS_PER_REQUEST_KB,
            "fd_growth": FD_GROWTH,
            "redis_key_bound": redis_summary["bound"],
        },
        "redis_prefix": prefix,
        "processes": processes_summary,
        "redis": redis_summary,
        "series": series,
        "collector": figures,
        "requests": {
            "total": total,
            "rate": total / max(loaded[-1]["t"], 1.0) if loaded else 0.0,
            "unexpected_total": unexpected,
            "sent": dict(tally.sent),
            "unexpected": dict(tally.unexpected),
            "examples": tally.examples,
            "behind": tally.behind,
        },
        "settled": settled,
        "samples": rows,
        "logs": {"folder": str(folder), **logs},
    }


def read_logs(path: Path) -> dict[str, int]:
    """What every service wrote: its lines, and those showing the key or a traceback."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return {
        "lines": len(lines),
        "upstream_key": sum(UPSTREAM_KEY in line for line in lines),
        "tracebacks": sum(line.startswith("Traceback") for line in lines),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=60.0, help="requests/s in total")
    parser.add_argument("--concurrency", type=int, default=48, help="requests at once, at most")
    parser.add_argument("--interval", type=float, help="seconds between samples")
    parser.add_argument("--warmup", type=float, help="seconds left out of the judgement")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--proxy-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the proxies, for experiments (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the logs of a passed run")
    args = parser.parse_args()
    if args.interval is None:
        args.interval = min(10.0, max(2.0, args.duration / 40))
    if args.warmup is None:
        args.warmup = max(30.0, 0.2 * args.duration)

    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        result = soak(args, folder)
    except ServiceDied as exc:
        print(f"FAIL: {exc}; logs in {folder}", file=sys.stderr)
        return 1
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"soak could not run: {exc}; logs in {folder}", file=sys.stderr)
        return 2
    report = table(result)
    if args.json:
        print(report, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(report)
    if result["passed"] and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
