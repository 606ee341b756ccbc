"""The collector's two loops: scrape rounds on a steady cadence, and the database writer.

Each round (see ``cadence``) resolves the targets, scrapes them all at once within
``SCRAPE_TIMEOUT``, merges the answers into a snapshot per variant (``merge``) and queues
the snapshots in the ``BufferedWriter``. Nothing in a round waits for the database: the
writer loop, woken after each round, flushes the queue, rolls the new buckets up
(``store.downsample``) and, every few minutes, expires old rows. While the database is
away the queue keeps the newest ``COLLECTOR_BUFFER_MAX`` snapshots and the next flush
writes them.

Each round's target baselines (``merge.RoundMerger.baselines``) travel with its
snapshots and are written in the transaction of the round's last rows; ``open`` loads them
back, so after a stop or a ``kill -9`` the first round counts from the last round written
(ADR 0014): the downtime's traffic, and that of rounds lost from the buffer, is stored.

Memory stays bounded: the merger keeps only the last scrape of the targets of the last
round, the per-target state here is pruned to the current targets, and the queue is
bounded. A target's trouble is logged when its state changes (up → down → up), and every
failed scrape is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from zai_proxy.collector.baselines import Baseline
from zai_proxy.collector.cadence import RoundSchedule
from zai_proxy.collector.database import StorageError, masked, normalise_url
from zai_proxy.collector.merge import RoundMerger
from zai_proxy.collector.metrics import CollectorMetrics
from zai_proxy.collector.scraper import Scraper, ScrapeResult, create_session
from zai_proxy.collector.settings import CollectorSettings
from zai_proxy.collector.snapshot import Snapshot
from zai_proxy.collector.store import BufferedWriter, SnapshotStore
from zai_proxy.collector.targets import Resolve, TargetDiscovery, TargetSpec, system_resolver

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("zai_proxy.collector")

EXPIRE_EVERY = 300.0  # seconds between expiry passes
STOP_FLUSH_TIMEOUT = 5.0  # seconds the last flush may take at shutdown
# No round completed for this many intervals (and at least STALL_SECONDS): unhealthy.
STALL_INTERVALS = 10
STALL_SECONDS = 30.0


@dataclass(slots=True)
class TargetState:
    """What the last round saw of one target (for /targets and state-change logging)."""

    url: str
    kind: str
    up: bool
    reason: str | None = None
    detail: str = ""
    last_scrape: float | None = None  # epoch seconds of the last good scrape


class CollectorService:
    """One collector process: owns the store, the writer, the merger and both loops."""

    def __init__(
        self,
        settings: CollectorSettings,
        *,
        store: SnapshotStore | None = None,
        resolve: Resolve = system_resolver,
        registry: CollectorRegistry | None = None,
        wall: Callable[[], float] = time.time,
        tracer: Tracer | None = None,
    ) -> None:
        """``tracer``: a span per scrape round (OTEL_*; None: no tracing)."""
        self.settings = settings
        self.tracer = tracer
        self.interval = settings.scrape_interval
        self.timeout = settings.timeout()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = CollectorMetrics(self.registry)
        self.store = store or SnapshotStore.open(
            settings.database_url, retention=settings.retention()
        )
        self.writer = BufferedWriter(self._write, max_snapshots=settings.collector_buffer_max)
        self.merger = RoundMerger(self.interval, settings.prices(), pool=settings.pool())
        self.discovery = TargetDiscovery(
            [*settings.proxy_targets(), *settings.limiter_targets()],
            resolve=resolve,
            timeout=self.timeout / 2,
        )
        self.schedule = RoundSchedule(self.interval, wall=wall)
        self.targets: dict[str, TargetState] = {}
        self.rounds = 0
        self._wall = wall
        self._unresolved: set[TargetSpec] = set()
        self._database_ok = True
        self._last_expire: float | None = None
        self._last_round_end: float | None = None  # monotonic
        self._started = time.monotonic()
        self._queued = asyncio.Event()
        self._scraper: Scraper | None = None
        self._round_task: asyncio.Task[None] | None = None
        self._write_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Open the HTTP client and restore the targets' baselines: rounds can run
        (``start`` also runs them on the cadence)."""
        if self._scraper is None:
            await self._restore()
            token = self.settings.metrics_token.get_secret_value()
            self._scraper = Scraper(create_session(token), clock=self._wall)
        self._started = time.monotonic()

    async def start(self) -> None:
        """Start the round loop and the writer loop."""
        await self.open()
        self._round_task = asyncio.create_task(self._round_loop(), name="collector-rounds")
        self._write_task = asyncio.create_task(self._write_loop(), name="collector-writer")
        log.info(
            "collecting every %g s (timeout %g s) from %s into %s",
            self.interval,
            self.timeout,
            ", ".join(str(spec) for spec in self.discovery.specs),
            masked(normalise_url(self.settings.database_url)),
        )

    async def stop(self) -> None:
        """Stop the rounds, write what is queued (within a bound), release everything."""
        await _cancel(self._round_task)
        await _cancel(self._write_task)
        if self.writer.pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_FLUSH_TIMEOUT):
                    await self.write_queued(self._wall(), maintain=False)
            if self.writer.pending:
                log.warning("stopping with %d snapshots not written", self.writer.pending)
        if self._scraper is not None:
            await self._scraper.session.close()
        await self.store.close()

    def healthy(self) -> bool:
        """Whether rounds are still completing (a stuck loop fails liveness)."""
        last = self._last_round_end if self._last_round_end is not None else self._started
        return time.monotonic() - last < max(STALL_SECONDS, STALL_INTERVALS * self.interval)

    def ready(self) -> bool:
        """Whether a round has completed."""
        return self._last_round_end is not None

    @property
    def database_ok(self) -> bool:
        """Whether the last database operation succeeded."""
        return self._database_ok and not self.writer.failing

    async def run_round(self, slot_wall: float) -> list[Snapshot]:
        """Scrape every target now and queue the snapshots of the interval ending at the slot."""
        if self._scraper is None:
            raise RuntimeError("the collector is not open: call open() or start() first")
        if self.tracer is None:
            return await self._round(self._scraper, slot_wall, None)
        with self.tracer.start_as_current_span("collector scrape round") as span:
            return await self._round(self._scraper, slot_wall, span)

    async def _round(self, scraper: Scraper, slot_wall: float, span: Span | None) -> list[Snapshot]:
        started = time.monotonic()
        found = await self.discovery.discover()
        self._note_unresolved(found.errors)
        remaining = max(0.05, self.timeout - (time.monotonic() - started))
        results = await scraper.scrape_all(found.targets, remaining)
        self._note_results(results)
        # The merger labels a round by the bucket of the time it is given: the middle of
        # the interval that ends at this slot, which is what the counters' increases cover.
        snapshots = self.merger.merge(
            slot_wall - self.interval / 2, [r.scrape for r in results if r.scrape is not None]
        )
        # With the round's baselines: written in the transaction of its last rows.
        self.writer.add(snapshots, self.merger.baselines())
        self._queued.set()
        self.rounds += 1
        self._last_round_end = time.monotonic()
        m = self.metrics
        m.rounds.inc()
        m.round_duration.observe(self._last_round_end - started)
        m.snapshots_buffered.set(self.writer.pending)
        if any(r.ok and r.target.kind == "proxy" for r in results):
            m.last_success.set(self._wall())
        if span is not None:
            _describe_round(span, results, len(found.errors), len(snapshots))
        return snapshots

    async def write_queued(self, now: float, *, maintain: bool = True) -> int:
        """Flush the queue; then, with the database there, roll up and expire. Rows written."""
        dropped, rejected = self.writer.dropped, self.writer.rejected
        written = await self.writer.flush()
        m = self.metrics
        m.snapshots_written.inc(written)
        m.snapshots_dropped.labels("buffer_full").inc(self.writer.dropped - dropped)
        m.snapshots_dropped.labels("rejected").inc(self.writer.rejected - rejected)
        m.snapshots_buffered.set(self.writer.pending)
        if written:
            m.last_write.set(now)
        if self.writer.failing:
            m.database_up.set(0)
            return written
        if maintain:
            await self._maintain(now)
        m.database_up.set(1 if self._database_ok else 0)
        return written

    async def _round_loop(self) -> None:
        while True:
            slot = self.schedule.next()
            if slot.skipped:
                self.metrics.rounds_skipped.inc(slot.skipped)
                log.warning("a round overran: %d round(s) skipped", slot.skipped)
            if slot.jumped:
                log.warning("the wall clock jumped by %.1f s: rounds re-aligned", slot.jumped)
            await asyncio.sleep(max(0.0, slot.deadline - time.monotonic()))
            try:
                await self.run_round(slot.wall)
            except Exception:
                # A bug in one round must not end the collector: log it, try the next.
                log.exception("scrape round failed")

    async def _write_loop(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            try:
                await self.write_queued(self._wall())
            except Exception:
                log.exception("writing snapshots failed")

    async def _write(self, batch: Sequence[Snapshot], baselines: Sequence[Baseline] = ()) -> int:
        # Every round is one of the finest rows, the first after a restart included (it
        # covers the downtime, so it is longer than the others).
        resolution = self.store.resolution_of(self.interval)
        try:
            return await self.store.write(batch, baselines, resolution=resolution)
        except StorageError:
            self.metrics.database_errors.labels("write").inc()
            raise

    async def _restore(self) -> None:
        # The baselines written with the last round before a stop or a kill: the first
        # round counts on from them, so what the targets counted meanwhile is stored.
        now = self._wall()
        try:
            stored = await self.store.load_baselines(self.store.baselines_stale_before(now))
        except StorageError as exc:
            self.metrics.database_errors.labels("restore").inc()
            log.warning("no baselines restored (targets prime in the first round): %s", exc)
            return
        restored = self.merger.restore(stored)
        if restored:
            covered = max(b.covered_until for b in stored)
            log.info(
                "restored the baselines of %d target(s); the first round counts from %.0f s ago",
                restored,
                now - covered,
            )

    async def _maintain(self, now: float) -> None:
        operation = "downsample"
        try:
            await self.store.downsample(now)
            if self._last_expire is None or now - self._last_expire >= EXPIRE_EVERY:
                operation = "expire"
                deleted = await self.store.expire(now)
                self._last_expire = now
                if deleted:
                    log.info("expired %d rows past their retention", deleted)
        except StorageError as exc:
            self.metrics.database_errors.labels(operation).inc()
            if self._database_ok:
                log.warning("rollup database %s failed (retried each round): %s", operation, exc)
            self._database_ok = False
            return
        if not self._database_ok:
            log.info("rollup database %s works again", operation)
        self._database_ok = True

    def _note_unresolved(self, errors: dict[TargetSpec, str]) -> None:
        for spec, reason in errors.items():
            self.metrics.scrape_errors.labels(spec.kind, "dns").inc()
            if spec not in self._unresolved:
                log.warning("%s target %s does not resolve: %s", spec.kind, spec, reason)
        for spec in self._unresolved - errors.keys():
            log.info("%s target %s resolves again", spec.kind, spec)
        self._unresolved = set(errors)

    def _note_results(self, results: list[ScrapeResult]) -> None:
        m = self.metrics
        current: dict[str, TargetState] = {}
        for kind in ("proxy", "limiter"):
            of_kind = [r for r in results if r.target.kind == kind]
            m.targets.labels(kind).set(len(of_kind))
            m.targets_up.labels(kind).set(sum(r.ok for r in of_kind))
        for result in results:
            target = result.target
            m.scrape_duration.labels(target.kind).observe(result.duration)
            before = self.targets.get(target.url)
            state = TargetState(target.url, target.kind, result.ok, result.reason, result.detail)
            if result.scrape is not None:
                state.last_scrape = result.scrape.time
            elif before is not None:
                state.last_scrape = before.last_scrape
            current[target.url] = state
            if not result.ok:
                m.scrape_errors.labels(target.kind, result.reason or "connection").inc()
                if before is None or before.up:
                    log.warning(
                        "%s target %s is down: %s (%s)",
                        target.kind,
                        target.url,
                        result.reason,
                        result.detail,
                    )
            elif before is None:
                log.info("%s target %s is up", target.kind, target.url)
            elif not before.up:
                log.info("%s target %s is up again", target.kind, target.url)
        for url in self.targets.keys() - current.keys():
            gone = self.targets[url]
            log.info("%s target %s is no longer discovered", gone.kind, url)
        # Only the current targets are kept: replicas that come and go leave nothing behind.
        self.targets = current


def _describe_round(
    span: Span, results: list[ScrapeResult], unresolved: int, snapshots: int
) -> None:
    """A round's span: how many targets answered, which failed and why (one event each)."""
    span.set_attributes(
        {
            "zai_proxy.collector.targets": len(results),
            "zai_proxy.collector.scraped": sum(result.ok for result in results),
            "zai_proxy.collector.unresolved": unresolved,
            "zai_proxy.collector.snapshots": snapshots,
        }
    )
    for result in results:
        if not result.ok:
            span.add_event(
                "scrape failed",
                {
                    "url.full": result.target.url,
                    "zai_proxy.collector.target_kind": result.target.kind,
                    "error.type": result.reason or "connection",
                    "zai_proxy.collector.scrape_seconds": result.duration,
                },
            )


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
