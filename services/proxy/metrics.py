"""The proxy's Prometheus metrics: labels and bounded label values.

Their names are defined once, in zai_proxy.shared.proxy_metrics (the collector, the Helm
chart's dashboard and the docs read them there). Label values are bounded: ``path`` is a
route template, ``model`` is normalised and capped at METRICS_MAX_MODELS distinct values
per process (later ones become ``other``), so no client can grow memory by inventing names.

With PROMETHEUS_MULTIPROC_DIR set (``zai-proxy proxy --processes N``), prometheus_client
writes every value to shared files and the exposition (zai_proxy.shared.exposition)
merges the processes.
"""

from __future__ import annotations

import platform
import re
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from zai_proxy import __version__
from zai_proxy.proxy.buckets import LATENCY_BUCKETS
from zai_proxy.proxy.usage import Usage
from zai_proxy.shared.proxy_metrics import (
    BUILD_INFO,
    CLIENT_REFUSALS,
    CLIENT_WAIT,
    IN_FLIGHT,
    KEY_ATTEMPTS,
    KEY_CONCURRENCY,
    KEY_PARKED,
    KEY_PARKED_UNTIL,
    KEY_RATE,
    LIMITER_CONCURRENCY,
    LIMITER_DEGRADED,
    LIMITER_RATE,
    LIMITER_REPLICAS,
    OTHER,
    QUEUE_WAIT,
    QUEUED,
    RATE_LIMIT_WAIT,
    RATE_LIMITED,
    REFUSALS,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    RESPONSE_SIZE,
    RETRIES,
    TIME_TO_FIRST_BYTE,
    TOKEN_CACHE_READ,
    TOKEN_CACHE_WRITE,
    TOKEN_INPUT,
    TOKEN_OUTPUT,
    TOKEN_REASONING,
    UNKNOWN,
    UNPARSEABLE,
    UPSTREAM_ERRORS,
    WORKERS,
)

SIZE_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

_MODEL_CHARS = re.compile(r"[^a-z0-9._:/@+-]")


class ModelLabels:
    """Normalises model names and caps how many distinct ones become label values."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._labels: set[str] = set()
        self._seen: dict[str, str] = {}

    def __call__(self, model: str | None) -> str:
        if not model:
            return UNKNOWN
        label = self._seen.get(model)
        if label is not None:
            return label
        label = _MODEL_CHARS.sub("", model[:256].strip().lower())[:64] or UNKNOWN
        if label not in self._labels:
            if len(self._labels) >= self.limit:
                label = OTHER
            else:
                self._labels.add(label)
        # The raw-name cache stays small too: a flood of invented names must not grow it.
        if len(self._seen) < self.limit * 4:
            self._seen[model] = label
        return label


class ProxyMetrics:
    """Every metric the proxy exports, with cached label children for the hot path."""

    def __init__(self, variant: str, max_models: int, registry: CollectorRegistry) -> None:
        self.variant = variant
        self.models = ModelLabels(max_models)
        self.registry = registry
        r = registry
        self.requests = Counter(
            REQUESTS_TOTAL,
            "Requests answered, by route template, status and client key alias.",
            ["method", "path", "status", "model", "key", "variant"],
            registry=r,
        )
        self.duration = Histogram(
            REQUEST_DURATION,
            "Whole request time, from arrival to the last byte sent, by who answered "
            "(origin: upstream, proxy or client).",
            ["path", "model", "variant", "origin"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            TIME_TO_FIRST_BYTE,
            "Time from arrival to the first body byte of an upstream answer sent to the "
            "client (first token of a stream, the whole body otherwise).",
            ["path", "model", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.size = Histogram(
            RESPONSE_SIZE,
            "Response body bytes sent to the client.",
            ["path", "variant"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            UPSTREAM_ERRORS,
            "Upstream attempts that failed, by error type (429s by class).",
            ["type", "variant"],
            registry=r,
        )
        token_labels = ["model", "key", "variant", "source"]
        self.tokens_in = Counter(
            TOKEN_INPUT,
            "Input tokens, all of them (cache reads included).",
            token_labels,
            registry=r,
        )
        self.tokens_out = Counter(
            TOKEN_OUTPUT, "Output tokens (reasoning included).", token_labels, registry=r
        )
        self.tokens_cache_read = Counter(
            TOKEN_CACHE_READ,
            "Input tokens read from the prompt cache.",
            token_labels,
            registry=r,
        )
        self.tokens_cache_write = Counter(
            TOKEN_CACHE_WRITE,
            "Input tokens written to the prompt cache.",
            token_labels,
            registry=r,
        )
        self.tokens_reasoning = Counter(
            TOKEN_REASONING, "Output tokens spent on reasoning.", token_labels, registry=r
        )
        self.rate_limit_wait_child = Histogram(
            RATE_LIMIT_WAIT,
            "Time an upstream attempt waited for the rate limiter.",
            ["variant"],
            buckets=WAIT_BUCKETS,
            registry=r,
        ).labels(variant)
        self.queue_wait_child = Histogram(
            QUEUE_WAIT,
            "Time a request waited for a free upstream worker (MAX_WORKERS).",
            ["variant"],
            buckets=WAIT_BUCKETS,
            registry=r,
        ).labels(variant)
        self.retries = Counter(
            RETRIES,
            "Upstream attempts repeated, by the reason of the failed attempt.",
            ["reason", "variant"],
            registry=r,
        )
        self.rate_limited = Counter(
            RATE_LIMITED,
            "Requests the proxy answered 429 itself (its limiter's wait was over budget).",
            ["variant"],
            registry=r,
        ).labels(variant)
        self.refusals = Counter(
            REFUSALS,
            "Requests the proxy answered itself instead of the upstream, by reason (the "
            "X-Proxy-Error code).",
            ["reason", "variant"],
            registry=r,
        )
        self.limiter_rate = Gauge(
            LIMITER_RATE,
            "Requests/s the shared limiter admits for the pool now (+Inf: no limit).",
            ["variant"],
            multiprocess_mode="mostrecent",
            registry=r,
        ).labels(variant)
        self.limiter_concurrency = Gauge(
            LIMITER_CONCURRENCY,
            "Cluster-wide cap on concurrent upstream requests now (+Inf: none).",
            ["variant"],
            multiprocess_mode="mostrecent",
            registry=r,
        ).labels(variant)
        self.limiter_degraded = Gauge(
            LIMITER_DEGRADED,
            "1 while the limiter store is unreachable and this replica limits on its own.",
            ["variant"],
            multiprocess_mode="max",
            registry=r,
        ).labels(variant)
        self.limiter_replicas = Gauge(
            LIMITER_REPLICAS,
            "Proxy replicas sharing the pool (by heartbeat).",
            ["variant"],
            multiprocess_mode="mostrecent",
            registry=r,
        ).labels(variant)
        self.key_rate = Gauge(
            KEY_RATE,
            "Requests/s the upstream key's pool admits now (+Inf: no limit), by key alias.",
            ["key", "variant"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.key_concurrency = Gauge(
            KEY_CONCURRENCY,
            "Cluster-wide cap on the upstream key's concurrent requests (+Inf: none).",
            ["key", "variant"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.key_parked = Gauge(
            KEY_PARKED,
            "1 while the upstream key is parked (its quota spent, or unusable), as this "
            "replica knows it.",
            ["key", "variant"],
            multiprocess_mode="max",
            registry=r,
        )
        self.key_parked_until = Gauge(
            KEY_PARKED_UNTIL,
            "When the upstream key's parking ends (epoch seconds; +Inf: until lifted; 0: "
            "not parked).",
            ["key", "variant"],
            multiprocess_mode="max",
            registry=r,
        )
        self.key_attempts = Counter(
            KEY_ATTEMPTS,
            "Upstream attempts sent with the upstream key, by key alias.",
            ["key", "variant"],
            registry=r,
        )
        self.client_wait = Histogram(
            CLIENT_WAIT,
            "Time a request's first upstream attempt waited for the limiter, by client key "
            "alias and priority class.",
            ["client", "class", "variant"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.client_refusals = Counter(
            CLIENT_REFUSALS,
            "Requests the proxy refused itself, by client key alias and reason (the "
            "X-Proxy-Error code; a budget: client_budget_<rpm|concurrent|tokens_per_day>).",
            ["client", "reason", "variant"],
            registry=r,
        )
        self.in_flight = Gauge(
            IN_FLIGHT,
            "Requests being proxied now (holding a worker).",
            ["variant"],
            multiprocess_mode="livesum",
            registry=r,
        ).labels(variant)
        self.queued = Gauge(
            QUEUED,
            "Requests waiting for a free worker.",
            ["variant"],
            multiprocess_mode="livesum",
            registry=r,
        ).labels(variant)
        self.workers = Gauge(
            WORKERS,
            "Upstream worker slots (MAX_WORKERS, summed over processes).",
            ["variant"],
            multiprocess_mode="livesum",
            registry=r,
        ).labels(variant)
        self.unparseable = Counter(
            UNPARSEABLE,
            "Requests whose body was not a JSON object (forwarded unchanged).",
            ["variant"],
            registry=r,
        ).labels(variant)
        Gauge(
            BUILD_INFO,
            "Build information; always 1.",
            ["version", "python", "variant"],
            multiprocess_mode="max",
            registry=r,
        ).labels(__version__, platform.python_version(), variant).set(1)

        self._cache: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = metric.labels(*labels)
        return child

    def observe_request(
        self,
        method: str,
        path: str,
        status: int,
        model: str,
        key: str,
        duration: float,
        ttfb: float | None,
        size: int,
        origin: str,
    ) -> None:
        """Record one finished request; ``origin`` is one of ``ORIGINS``."""
        v = self.variant
        self._child(self.requests, method, path, str(status), model, key, v).inc()
        self._child(self.duration, path, model, v, origin).observe(duration)
        if ttfb is not None:
            self._child(self.ttfb, path, model, v).observe(ttfb)
        self._child(self.size, path, v).observe(size)

    def observe_tokens(self, model: str, key: str, usage: Usage, source: str) -> None:
        """Record the tokens of one exchange; source is "usage" or "estimate"."""
        v = self.variant
        for metric, value in (
            (self.tokens_in, usage.input),
            (self.tokens_out, usage.output),
            (self.tokens_cache_read, usage.cache_read),
            (self.tokens_cache_write, usage.cache_write),
            (self.tokens_reasoning, usage.reasoning),
        ):
            child = self._child(metric, model, key, v, source)
            if value:
                child.inc(value)

    def upstream_key(self, alias: str, limiter: Any, parked_until: float, now: float) -> None:
        """Show one upstream key's limits and parking (``limiter``: its ProxyLimiter)."""
        v = self.variant
        cap = limiter.concurrency
        self._child(self.key_rate, alias, v).set(limiter.rate)
        self._child(self.key_concurrency, alias, v).set(float("inf") if cap is None else cap)
        parked = parked_until > now
        self._child(self.key_parked, alias, v).set(1 if parked else 0)
        self._child(self.key_parked_until, alias, v).set(parked_until if parked else 0)

    def key_attempt(self, alias: str) -> None:
        """Count one upstream attempt sent with a key."""
        self._child(self.key_attempts, alias, self.variant).inc()

    def upstream_error(self, kind: str) -> None:
        """Count one failed upstream attempt."""
        self._child(self.upstream_errors, kind, self.variant).inc()

    def refusal(self, reason: str) -> None:
        """Count one answer the proxy made itself; ``reason`` is a ProxyError code."""
        self._child(self.refusals, reason, self.variant).inc()

    def client_waited(self, client: str, priority: str, seconds: float) -> None:
        """Record how long a request's first attempt waited for the limiter."""
        self._child(self.client_wait, client, priority, self.variant).observe(seconds)

    def client_refused(self, client: str, reason: str) -> None:
        """Count one request of a client the proxy refused itself."""
        self._child(self.client_refusals, client, reason, self.variant).inc()

    def retry(self, reason: str) -> None:
        """Count one repeated upstream attempt."""
        self._child(self.retries, reason, self.variant).inc()
