"""Process kills and graceful shutdown, with real processes on loopback.

- SIGTERM while 100 streams are open: the proxy reports not ready at once, keeps serving
  for SHUTDOWN_DELAY, then refuses new connections, lets every stream finish and exits 0
  within SHUTDOWN_GRACE; a stream longer than the grace period is cut at its deadline and
  the process still exits.
- kill -9 of one proxy replica of two sharing Redis, while streams hold cluster-wide
  concurrency leases: the survivor serves on without a failed request, the dead replica's
  leases come back by themselves once they expire, and a replica restarted on the same
  port joins again.
- kill -9 of the limiter leader while proxies are under traffic: no request fails, the
  other limiter takes over, and the killed one restarts from the saved state. (Takeover
  and restore on their own are proven in tests/limiter/test_service.py.)
- kill -9 of the collector while it scrapes a proxy under traffic, then a clean restart:
  the restarted one migrates idempotently, keeps every row written before the kill, and
  its first round counts from the baselines written with the last round before the kill
  (docs/plan/0014), so the stored totals are exactly the traffic sent, requests and tokens,
  the downtime's included.

Every test has its own Redis key prefix and pool, so none sees another's leases or state.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import select

from tests.collector.processes import CollectorClient, collector, metrics_url, proxy, wait_for
from tests.limiter.shared_state import SharedState
from tests.reliability.probes import port_of
from tests.support import (
    ServiceProcess,
    SteadyLoad,
    free_port,
    launch_proxy,
    own_prefix,
    scrape,
    start_limiter,
    start_proxy,
    wait_until,
)
from zai_proxy.collector import metrics as collector_metrics
from zai_proxy.collector import migrate
from zai_proxy.collector.models import SNAPSHOT_COLUMNS, from_row, snapshots
from zai_proxy.collector.snapshot import Snapshot
from zai_proxy.collector.store import SnapshotStore
from zai_proxy.limiter import keys
from zai_proxy.limiter.control import LEASE_TICKS
from zai_proxy.proxy.limiting import LEASE_TTL_SECONDS
from zai_proxy.simulator.process import SimulatorProcess

CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}
DONE = b"data: [DONE]\n\n"


# --- helpers -------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """What one client stream saw."""

    first_chunk: float | None = None  # monotonic time of the first body bytes
    ended: float | None = None  # monotonic time the stream ended (either way)
    body: bytes = b""
    status: int = 0
    error: str = ""

    @property
    def complete(self) -> bool:
        return self.status == 200 and not self.error and self.body.endswith(DONE)


class Streams:
    """``count`` streaming chat completions held open from a background thread."""

    def __init__(self, url: str, count: int, headers: dict[str, str]) -> None:
        self.url = f"{url}/v1/chat/completions"
        self.headers = headers
        self.results = [StreamResult() for _ in range(count)]
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Streams:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(60)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"streams still open after {timeout} s"

    @property
    def started(self) -> int:
        return sum(1 for r in self.results if r.first_chunk is not None)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=len(self.results) + 4)
        timeout = httpx.Timeout(60, connect=10)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
            await asyncio.gather(*(self._one(http, r) for r in self.results))

    async def _one(self, http: httpx.AsyncClient, result: StreamResult) -> None:
        try:
            async with http.stream("POST", self.url, json=STREAM, headers=self.headers) as answer:
                result.status = answer.status_code
                async for chunk in answer.aiter_raw():
                    if result.first_chunk is None:
                        result.first_chunk = time.monotonic()
                    result.body += chunk
        except httpx.HTTPError as exc:
            result.error = repr(exc)
        result.ended = time.monotonic()


def refuses_connections(url: str) -> bool:
    """Whether a new TCP connection to the service is refused."""
    try:
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


@dataclass
class Replica:
    """A proxy process on a fixed port, so that it can be killed and started again there."""

    upstream: str
    port: int
    env: dict[str, str]
    service: ServiceProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.service = launch_proxy(self.upstream, self.env, port=self.port)

    def kill(self) -> None:
        assert self.service is not None
        self.service.signal(signal.SIGKILL)
        self.service.process.wait(10)

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


@contextlib.contextmanager
def replicas(upstream: str, env: dict[str, str], count: int) -> Iterator[list[Replica]]:
    """``count`` proxies on their own ports, stopped at the end."""
    started = [Replica(upstream, free_port(), env) for _ in range(count)]
    try:
        for replica in started:
            replica.start()
        yield started
    finally:
        for replica in started:
            replica.stop()


class Leases:
    """The live concurrency leases of a pool, read from Redis on Redis's clock."""

    def __init__(self, redis_url: str, prefix: str, pool: str) -> None:
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.key = keys.pool_keys(prefix, pool).leases

    def live(self) -> list[str]:
        seconds, micros = self.client.time()
        now = seconds + micros / 1_000_000
        return [str(member) for member in self.client.zrangebyscore(self.key, f"({now!r}", "+inf")]

    def by_replica(self) -> dict[str, int]:
        """Live leases per replica (a lease id is ``<replica>-<counter>``)."""
        counts: dict[str, int] = {}
        for lease in self.live():
            replica = lease.rsplit("-", 1)[0]
            counts[replica] = counts.get(replica, 0) + 1
        return counts

    def close(self) -> None:
        self.client.close()


def wait_exit(service: ServiceProcess, timeout: float) -> tuple[int, float]:
    """The exit status of a process already signalled, and seconds until it exited."""
    started = time.monotonic()
    code = service.process.wait(timeout)
    return code, time.monotonic() - started


# --- graceful shutdown ---------------------------------------------------------------------

OPEN_STREAMS = 100
DRAIN = {
    # Every stream holds a worker and a concurrency lease; none may queue or be refused.
    "MAX_WORKERS": str(2 * OPEN_STREAMS),
    "CONCURRENCY_LIMIT_MAX": str(4 * OPEN_STREAMS),
    "RATE_LIMIT_INITIAL": "10000",
    "RATE_LIMIT_MAX": "10000",
    "RATE_LIMIT_BURST": "1",
    "ACCESS_LOG": "false",
}


def test_sigterm_with_100_open_streams_lets_every_one_finish_then_exits_0(
    simulator: SimulatorProcess,
) -> None:
    delay, grace = 1.5, 20.0
    env = {**DRAIN, "SHUTDOWN_DELAY": str(delay), "SHUTDOWN_GRACE": str(grace)}
    # 20 events 250 ms apart: each stream lasts about 5 s, most of it after the SIGTERM.
    headers = {"x-sim-chunks": "20", "x-sim-chunk-gap-ms": "250"}
    with (
        start_proxy(simulator.url, env=env) as proxy,
        Streams(proxy.url, OPEN_STREAMS, headers) as streams,
    ):
        wait_until(lambda: streams.started == OPEN_STREAMS, timeout=30)
        assert scrape(proxy.url).value("proxy_in_flight_requests") == OPEN_STREAMS
        proxy.signal(signal.SIGTERM)
        signalled = time.monotonic()

        # Within the delay: not ready, but a new connection is still served.
        ready = httpx.get(f"{proxy.url}/ready", timeout=5)
        late = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=10)
        within_delay = time.monotonic() - signalled
        # After the delay the listener is closed.
        wait_until(lambda: refuses_connections(proxy.url), timeout=delay + 5)
        refused_after = time.monotonic() - signalled
        streaming_at_close = sum(1 for r in streams.results if r.ended is None)

        code, _ = wait_exit(proxy, timeout=delay + grace + 10)
        exited_after = time.monotonic() - signalled
        streams.join(10)

    results = streams.results
    complete = sum(1 for r in results if r.complete)
    last_end = max(r.ended or 0 for r in results) - signalled
    print(
        f"SIGTERM with {OPEN_STREAMS} open streams: ready 503 and a new request served "
        f"{within_delay:.2f} s in; listener closed {refused_after:.2f} s in (delay {delay:g} "
        f"s) with {streaming_at_close} streams still running; last stream ended "
        f"{last_end:.2f} s in; exit {code} after {exited_after:.2f} s (grace {grace:g} s); "
        f"{complete}/{OPEN_STREAMS} streams complete"
    )
    assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
    assert late.status_code == 200
    assert within_delay < delay, "the probes must have run within the delay"
    assert refused_after >= delay
    assert streaming_at_close > 0, "the streams must outlast the delay to prove the drain"
    assert complete == OPEN_STREAMS, [r for r in results if not r.complete][:3]
    assert code == 0
    assert exited_after < delay + grace


def test_a_stream_longer_than_the_grace_period_is_cut_at_the_deadline_and_the_proxy_exits(
    simulator: SimulatorProcess,
) -> None:
    delay, grace = 0.5, 3.0
    env = {**DRAIN, "SHUTDOWN_DELAY": str(delay), "SHUTDOWN_GRACE": str(grace)}
    # 120 events 250 ms apart: 30 s, far beyond the grace period.
    headers = {"x-sim-chunks": "120", "x-sim-chunk-gap-ms": "250"}
    with start_proxy(simulator.url, env=env) as proxy, Streams(proxy.url, 1, headers) as streams:
        wait_until(lambda: streams.started == 1, timeout=15)
        proxy.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code, _ = wait_exit(proxy, timeout=delay + grace + 15)
        exited_after = time.monotonic() - signalled
        streams.join(10)
    (result,) = streams.results
    cut_after = (result.ended or 0) - signalled
    print(
        f"a 30 s stream at SIGTERM: cut {cut_after:.2f} s in (deadline {delay + grace:g} s), "
        f"{result.body.count(b'data:')} events through; exit {code} after {exited_after:.2f} s"
    )
    assert not result.complete
    assert DONE not in result.body
    assert result.body.count(b"data:") >= 2  # it was streaming until the cut
    # Cut at the deadline (the delay, then the grace period), not before, and not much later.
    assert delay + grace - 0.5 <= cut_after <= delay + grace + 5
    assert exited_after <= delay + grace + 10
    assert code == 0


# --- kill -9 of a proxy replica ------------------------------------------------------------

DOOMED_STREAMS, SURVIVING_STREAMS = 10, 5  # streams holding concurrency leases on each


def test_kill_9_of_a_replica_leaves_the_other_serving_and_its_leases_come_back(
    simulator: SimulatorProcess, real_redis_url: str
) -> None:
    pool = "kill-replica"
    # 64 events 250 ms apart: 16 s, longer than the dead replica's leases can outlive it.
    stream_headers = {"x-sim-chunks": "64", "x-sim-chunk-gap-ms": "250"}
    with own_prefix(real_redis_url, "kill") as prefix:
        env = {
            "REDIS_URL": real_redis_url,
            "REDIS_PREFIX": prefix,
            "RATE_LIMIT_POOL": pool,
            "RATE_LIMIT_INITIAL": "1000",
            "RATE_LIMIT_MAX": "10000",
            "CONCURRENCY_LIMIT_MAX": "100",
            "ACCESS_LOG": "false",
        }
        leases = Leases(real_redis_url, prefix, pool)
        try:
            with replicas(simulator.url, env, 2) as (doomed, survivor):
                load = SteadyLoad([doomed.url, survivor.url], 2, {"x-sim-latency-ms": "50"})
                with (
                    load,
                    Streams(doomed.url, DOOMED_STREAMS, stream_headers) as cut,
                    Streams(survivor.url, SURVIVING_STREAMS, stream_headers) as held,
                ):
                    wait_until(
                        lambda: (cut.started, held.started) == (DOOMED_STREAMS, SURVIVING_STREAMS),
                        timeout=20,
                    )
                    streams_started = time.monotonic()
                    before = leases.by_replica()
                    doomed.kill()  # returns once the process is reaped
                    killed_at = time.monotonic()
                    # Taken after the kill, and after what the dead process had already
                    # written to Redis has surely run: a lease the doomed replica was
                    # granted in its last moment must not pass for a fresh one.
                    time.sleep(0.2)
                    after_kill = set(leases.live())
                    held_after_kill = leases.by_replica()

                    # A lease granted after the kill can only be the survivor's.
                    def survivor_lease() -> str | None:
                        fresh = set(leases.live()) - after_kill
                        return next((m for m in fresh if m.rsplit("-", 1)[0] in before), None)

                    wait_until(survivor_lease, timeout=10)
                    survivor_id = str(survivor_lease()).rsplit("-", 1)[0]
                    (dead_id,) = set(before) - {survivor_id}

                    doomed.start()  # at once, on the same port, as a supervisor would
                    restarted = time.monotonic()
                    wait_until(lambda: dead_id not in leases.by_replica(), LEASE_TTL_SECONDS + 10)
                    returned_after = time.monotonic() - killed_at
                    # With the load stopped, what is in use is the survivor's streams: their
                    # leases, older than the TTL, were renewed.
                    load.stop()
                    wait_until(
                        lambda: time.monotonic() - streams_started > LEASE_TTL_SECONDS + 1, 5
                    )
                    wait_until(lambda: leases.by_replica() == {survivor_id: SURVIVING_STREAMS}, 5)
                    settled_at = time.monotonic() - streams_started
                    assert survivor.service is not None
                    in_flight = scrape(survivor.service.url).value("proxy_in_flight_requests")
                    # The dead heartbeat expires (6 s) and the restarted replica's counts.
                    for replica in (doomed, survivor):
                        assert replica.service is not None

                        def both_counted(url: str = replica.service.url) -> bool:
                            return scrape(url).value("proxy_limiter_replicas") == 2

                        wait_until(both_counted, timeout=15)
                    cut.join(10)
                    held.join(30)
        finally:
            leases.close()

    survivor_answers = load.answered(1)
    failed = [a for a in survivor_answers if a.status != 200]
    rejoined = load.answered(0, restarted)
    print(
        f"kill -9 of a replica: leases before {before}, dead replica's still counted after "
        f"the kill {held_after_kill[dead_id]}, gone {returned_after:.2f} s after it (lease "
        f"TTL {LEASE_TTL_SECONDS:g} s); in use then the survivor's {SURVIVING_STREAMS} "
        f"streams ({settled_at:.1f} s old); survivor served {len(survivor_answers)} "
        f"requests ({len(failed)} failed) and {SURVIVING_STREAMS}/{SURVIVING_STREAMS} "
        f"streams; the restarted replica served {sum(a.status == 200 for a in rejoined)} "
        f"requests"
    )
    assert before[dead_id] >= DOOMED_STREAMS and before[survivor_id] >= SURVIVING_STREAMS
    # A dead replica's leases do not vanish with it: they still count against the cap ...
    assert held_after_kill[dead_id] >= DOOMED_STREAMS
    # ... until they expire by themselves: within one TTL of the kill, and not much earlier
    # (the last renewal was at most one heartbeat before it).
    assert LEASE_TTL_SECONDS - 3.5 <= returned_after <= LEASE_TTL_SECONDS + 1
    # In use is then exactly what the survivor holds, leases renewed past their TTL.
    assert settled_at > LEASE_TTL_SECONDS
    assert in_flight == SURVIVING_STREAMS
    # The survivor failed nothing; every stream on it finished, none on the dead one did.
    assert len(survivor_answers) > 20 and not failed, failed[:3]
    assert all(r.complete for r in held.results)
    assert not any(r.complete for r in cut.results)
    # The restarted replica serves on the same port.
    assert sum(a.status == 200 for a in rejoined) > 20


# --- kill -9 of the limiter leader ---------------------------------------------------------

ADMIN = "limiter-admin-token-for-kill-tests"
LEARNED_RATE, LEARNED_LIMIT = 490.0, 500.0  # the hold point of the learned limit
INITIAL_RATE = 7.0  # what a limiter (or a proxy) starts from without a saved state
LIMITER_TICK = 0.5


def limiter_view(limiter: ServiceProcess, pool: str) -> dict:
    """One pool as the limiter's GET /state shows it, and whether this limiter leads."""
    answer = httpx.get(f"{limiter.url}/state", headers={"Authorization": f"Bearer {ADMIN}"})
    answer.raise_for_status()
    return {"leader": answer.json()["leader"], **answer.json()["pools"][pool]}


def test_kill_9_of_the_limiter_leader_under_traffic_fails_no_request_and_loses_no_state(
    simulator: SimulatorProcess, real_redis_url: str
) -> None:
    pool = "kill-limiter"
    with own_prefix(real_redis_url, "kill") as prefix, contextlib.ExitStack() as stack:
        shared = {
            "REDIS_URL": real_redis_url,
            "REDIS_PREFIX": prefix,
            "RATE_LIMIT_POOL": pool,
            "RATE_LIMIT_TICK": str(LIMITER_TICK),
            "RATE_LIMIT_INITIAL": f"{INITIAL_RATE:g}",
            "RATE_LIMIT_MAX": "1000",
        }
        limiter_env = {**shared, "LIMITER_ADMIN_TOKEN": ADMIN}
        SharedState(real_redis_url, prefix, LIMITER_TICK, INITIAL_RATE).save_learned(
            pool, rate=LEARNED_RATE, limit=LEARNED_LIMIT
        )
        first = stack.enter_context(start_limiter(limiter_env))
        second = stack.enter_context(start_limiter(limiter_env))
        proxies = stack.enter_context(replicas(simulator.url, {**shared, "ACCESS_LOG": "false"}, 2))
        # Demand far below the learned rate: every step holds it, nothing probes or climbs.
        load = stack.enter_context(
            SteadyLoad([p.url for p in proxies], 2, {"x-sim-latency-ms": "20"})
        )

        def rates() -> list[float]:
            return [scrape(p.url).value("proxy_limiter_rate") for p in proxies]

        def leading() -> list[bool]:
            return [limiter_view(x, pool)["leader"] for x in (first, second)]

        wait_until(lambda: rates() == [LEARNED_RATE] * 2, timeout=10)
        wait_until(lambda: sorted(leading()) == [False, True], timeout=10)
        leader, follower = (first, second) if leading()[0] else (second, first)
        stepped = limiter_view(leader, pool)["tick"]
        wait_until(lambda: limiter_view(leader, pool)["tick"] >= stepped + 2, timeout=10)

        leader.signal(signal.SIGKILL)
        leader.process.wait(10)
        killed_at = time.monotonic()
        wait_until(lambda: limiter_view(follower, pool)["leader"], timeout=10)
        takeover = time.monotonic() - killed_at
        stepped = limiter_view(follower, pool)["tick"]
        wait_until(lambda: limiter_view(follower, pool)["tick"] > stepped, timeout=10)
        rates_after_takeover = rates()

        # The killed limiter comes back; once the other one dies too it must lead, and it
        # goes on from the saved state, not from RATE_LIMIT_INITIAL.
        restarted = stack.enter_context(start_limiter(limiter_env))
        follower.signal(signal.SIGKILL)
        follower.process.wait(10)
        wait_until(lambda: limiter_view(restarted, pool)["leader"], timeout=10)
        stepped = limiter_view(restarted, pool)["tick"]
        wait_until(lambda: limiter_view(restarted, pool)["tick"] >= stepped + 2, timeout=10)
        recovered = limiter_view(restarted, pool)
        rates_at_end = rates()
        load.stop()

    failed = [a for a in load.answers if a.status != 200]
    print(
        f"kill -9 of the limiter leader: takeover {takeover:.2f} s (tick "
        f"{LIMITER_TICK:g} s); the restarted limiter leads with rate {recovered['rate']:g}, "
        f"learned limit {recovered['ceiling']:g} (saved {LEARNED_RATE:g}/{LEARNED_LIMIT:g}, "
        f"initial {INITIAL_RATE:g}), decision {recovered['last_decision']}; proxies' rate "
        f"{rates_after_takeover} after the takeover, {rates_at_end} at the end; "
        f"{len(load.answers)} requests, {len(failed)} failed"
    )
    assert len(load.answers) > 100 and not failed, failed[:3]
    # The lease lives LEASE_TICKS ticks; the follower asks for it every tick.
    assert takeover < (LEASE_TICKS + 2) * LIMITER_TICK
    assert rates_after_takeover == rates_at_end == [LEARNED_RATE] * 2
    assert (recovered["rate"], recovered["ceiling"]) == (LEARNED_RATE, LEARNED_LIMIT)
    assert recovered["last_decision"] == "hold"


# --- kill -9 of the collector --------------------------------------------------------------

PROMPT_TOKENS, COMPLETION_TOKENS = 100, 7  # per request, set by the simulator's headers
TOKENS = {
    "x-sim-prompt-tokens": str(PROMPT_TOKENS),
    "x-sim-completion-tokens": str(COMPLETION_TOKENS),
}


def stored(database_url: str, variant: str, since: float) -> tuple[list[Snapshot], tuple]:
    """Every round's snapshot of a variant stored since ``since`` (the finest rows, as
    written), and their (requests, tokens in, tokens out) totals."""

    async def read() -> list[Snapshot]:
        store = SnapshotStore.open(database_url)
        statement = (
            select(*SNAPSHOT_COLUMNS)
            .where(
                snapshots.c.resolution == store.resolutions[0],
                snapshots.c.variant == variant,
                snapshots.c.ts >= since,
            )
            .order_by(snapshots.c.ts)
        )
        try:
            async with store.engine.connect() as connection:
                return [from_row(row) for row in await connection.execute(statement)]
        finally:
            await store.close()

    rows = asyncio.run(read())
    totals = (
        sum(r.requests_total for r in rows),
        sum(r.tokens_in_total for r in rows),
        sum(r.tokens_out_total for r in rows),
    )
    return rows, totals


def ledger(requests: int) -> tuple[int, int, int]:
    """(requests, tokens in, tokens out) of that many requests of the load."""
    return requests, requests * PROMPT_TOKENS, requests * COMPLETION_TOKENS


def database_url_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'rollups.db'}"
    return str(request.getfixturevalue("postgres_databases").create())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_of_the_collector_under_traffic_loses_no_row_and_no_request(
    simulator: SimulatorProcess, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    since = time.time() - 5
    database_url = database_url_for(backend, tmp_path, request)
    target = proxy(simulator.url, "production")
    col = collector(
        {
            "COLLECTOR_TARGETS": target.url,
            "COLLECTOR_LIMITER_TARGETS": "",
            "SCRAPE_INTERVAL": "1",
            "DATABASE_URL": database_url,
        }
    )
    client = CollectorClient(col.url)
    headers = {**TOKENS, "x-sim-latency-ms": "30"}
    downtime = 2.5  # seconds of traffic with no collector at all
    try:
        target.start()
        col.start()
        client.wait_up({metrics_url(target.url)})
        # The load runs throughout: before the kill, while the collector is down, after
        # its restart, and across a clean restart.
        with SteadyLoad([target.url], 2, headers) as load:
            wait_for(lambda: len(stored(database_url, "production", since)[0]) >= 3, 20)
            assert col.process is not None
            col.process.kill()
            col.process.wait(10)
            rows_before, totals_before = stored(database_url, "production", since)
            sent_at_kill = sum(a.status == 200 for a in load.answers)
            time.sleep(downtime)

            restarted = time.monotonic()
            col.start()  # migrates first (`zai-proxy collector` does), then serves
            wait_for(lambda: httpx.get(f"{col.url}/ready").status_code == 200, 20)
            ready_after = time.monotonic() - restarted
            client.wait_rounds(3)
            col.stop()  # a clean restart too: SIGTERM writes what is queued
            col.start()
            wait_for(lambda: httpx.get(f"{col.url}/ready").status_code == 200, 20)
            client.wait_rounds(2)
        sent = sum(a.status == 200 for a in load.answers)
        # Everything the proxy answered is stored, once: the last requests by the next rounds.
        wait_for(lambda: stored(database_url, "production", since)[1] == ledger(sent), 20)
        client.wait_rounds(2)  # and nothing more arrives
        rows_after, totals_after = stored(database_url, "production", since)
        written = client.metric(collector_metrics.SNAPSHOTS_WRITTEN)
        revision = asyncio.run(migrate.current(database_url))
        log = col.log()
    finally:
        col.stop()
        target.stop()

    failed = [a for a in load.answers if a.status != 200]
    last_stored_ts = max(r.ts for r in rows_before)
    gaps = [r for r in rows_after if r.seconds > 1]
    print(
        f"kill -9 of the collector ({backend}): {sent_at_kill} requests answered by the kill, "
        f"{totals_before[0]:g} stored by then; {downtime:g} s down, restarted and ready in "
        f"{ready_after:.1f} s, then a clean restart; {sent} requests in all, "
        f"{totals_after[0]:g} stored; rows covering a restart: "
        f"{[(r.ts - last_stored_ts, r.seconds, r.requests_total) for r in gaps]}; "
        f"{len(rows_before)} rows kept, {len(rows_after)} after; migration {revision}"
    )
    assert not failed, failed[:3]
    # The restart migrated idempotently and wrote on.
    assert revision == migrate.head()
    assert log.count("Traceback") == 0
    assert written > 0
    assert max(r.ts for r in rows_after) > last_stored_ts
    # Every row written before the kill is still there, unchanged.
    assert rows_after[: len(rows_before)] == rows_before
    assert totals_before == ledger(int(totals_before[0]))
    assert 0 < totals_before[0] <= sent_at_kill
    # Exactly the traffic sent, requests and tokens: the first round after the kill counts
    # from the baselines written with the last round before it, in one row that covers the
    # downtime (no spike: its rate is over the whole gap).
    assert totals_after == ledger(sent)
    (gap,) = [r for r in gaps if r.ts == last_stored_ts + 1]
    assert gap.seconds >= downtime
    assert gap.requests_per_s == pytest.approx(gap.requests_total / gap.seconds)
