"""Once a second: what the upstream, the limiter and the proxies say.

- the simulator's ``/_sim/stats``: accepted requests, 429s by Z.ai code, the hidden limit
  in force (the ground truth: goodput and the upstream 429 ratio come from here);
- the limiter's ``/metrics``: ``limiter_rate``, ``limiter_ceiling``, ``limiter_hold_rate``
  and ``limiter_decisions_total`` by direction;
- the pool's state hash in Redis: the same rate and learned limit, exact to the step (the
  limiter refreshes its gauges once a second), the concurrency cap, and the last decision;
- every proxy's ``/metrics``: ``proxy_upstream_errors_total`` by type,
  ``proxy_retry_attempts_total`` by reason, ``proxy_rate_limited_total``,
  ``proxy_limiter_degraded``, summed over the replicas.

Counters are kept cumulative; the analysis turns them into per-second rates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from zai_proxy.limiter import keys

SAMPLE_SECONDS = 1.0
HTTP_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Sample:
    """One sample; counters cumulative since the run's start."""

    t: float  # monotonic seconds
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # Z.ai code -> 429s
    limit: float | None = None  # the hidden rate limit in force
    max_concurrency: int | None = None  # the hidden concurrency limit in force
    rate: float | None = None  # what acquire enforces (Redis state; None: no limit)
    ceiling: float | None = None  # the learned limit
    cap: int | None = None  # the concurrency cap in force
    tick: int | None = None  # the tick the limiter last stepped
    decision: str = ""  # what that step did
    metrics_rate: float | None = None  # the limiter's gauges, for comparison
    metrics_ceiling: float | None = None
    metrics_hold: float | None = None
    decisions: dict[str, float] = field(default_factory=dict)  # direction -> steps
    upstream_errors: dict[str, float] = field(default_factory=dict)  # type -> attempts
    retries: dict[str, float] = field(default_factory=dict)  # reason -> retries
    held_back: float = 0.0  # proxy_rate_limited_total
    degraded: float = 0.0  # replicas reporting degraded


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus exposition text to {sample name: [(labels, value), ...]}."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _by_label(
    metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, label: str
) -> dict[str, float]:
    totals: dict[str, float] = {}
    for labels, value in metrics.get(name, []):
        key = labels.get(label, "")
        totals[key] = totals.get(key, 0.0) + value
    return totals


def _single(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float | None:
    values = [value for _, value in metrics.get(name, [])]
    return max(values) if values else None


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _float(raw: Any) -> float | None:
    if raw in (None, b"", ""):
        return None
    return float(raw)


class Sampler:
    """Samples the run every second until cancelled."""

    def __init__(
        self, sim_url: str, limiter_url: str, proxy_urls: list[str], redis: Redis, prefix: str,
        pool: str,
    ) -> None:  # fmt: skip
        self.sim_url = sim_url
        self.limiter_url = limiter_url
        self.proxy_urls = proxy_urls
        self.redis = redis
        self.pool_keys = keys.pool_keys(prefix, pool)
        self.state_key = self.pool_keys.state
        self.samples: list[Sample] = []

    async def run(self) -> None:
        """Take a sample on every whole second from the start; until cancelled."""
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            start = time.monotonic()
            for n in range(1_000_000):
                await asyncio.sleep(max(0.0, start + n * SAMPLE_SECONDS - time.monotonic()))
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    self.samples.append(await self.sample(session))

    async def sample(self, session: aiohttp.ClientSession) -> Sample:
        """One sample of everything, asked at once."""

        async def text(url: str) -> str:
            async with session.get(url) as response:
                return await response.text()

        async def truth() -> tuple[float, str]:
            # Stamped when the simulator answers: the counters are as of that moment.
            body = await text(self.sim_url + "/_sim/stats")
            return time.monotonic(), body

        head = asyncio.gather(
            truth(),
            self.redis.hgetall(self.state_key),
            text(self.limiter_url + "/metrics"),
            return_exceptions=True,
        )
        tail = asyncio.gather(
            *(text(url + "/metrics") for url in self.proxy_urls), return_exceptions=True
        )
        (stats, state, limiter_text), proxy_texts = await asyncio.gather(head, tail)
        if isinstance(stats, BaseException):
            raise stats  # no ground truth, no sample
        t, sim_text = stats
        sim = orjson.loads(sim_text)
        sample = Sample(
            t=t,
            accepted=int(sim["accepted"]),
            rejected={code: int(n) for code, n in sim["rejected_429"].items()},
            limit=_float(sim["limit"]["rate"]),
            max_concurrency=sim["limit"].get("max_concurrency"),
        )
        if not isinstance(state, BaseException):
            fields = {_text(k): _text(v) for k, v in state.items()}
            rate = _float(fields.get("rate"))
            sample.rate = None if rate is not None and rate == float("inf") else rate
            sample.ceiling = _float(fields.get("limit"))
            sample.cap = int(fields["concurrency"]) if fields.get("concurrency") else None
            sample.tick = int(fields["consumed"]) if fields.get("consumed") else None
            sample.decision = fields.get("decision", "")
        if not isinstance(limiter_text, BaseException):
            limiter = parse_metrics(limiter_text)
            sample.metrics_rate = _single(limiter, "limiter_rate")
            sample.metrics_ceiling = _single(limiter, "limiter_ceiling")
            sample.metrics_hold = _single(limiter, "limiter_hold_rate")
            sample.decisions = _by_label(limiter, "limiter_decisions_total", "direction")
        for proxy_text in proxy_texts:
            if isinstance(proxy_text, BaseException):
                continue
            proxy = parse_metrics(proxy_text)
            for kind, value in _by_label(proxy, "proxy_upstream_errors_total", "type").items():
                sample.upstream_errors[kind] = sample.upstream_errors.get(kind, 0.0) + value
            for reason, value in _by_label(proxy, "proxy_retry_attempts_total", "reason").items():
                sample.retries[reason] = sample.retries.get(reason, 0.0) + value
            sample.held_back += _single(proxy, "proxy_rate_limited_total") or 0.0
            sample.degraded += _single(proxy, "proxy_limiter_degraded") or 0.0
        return sample
