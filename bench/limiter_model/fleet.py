"""A discrete-event model of the fleet: clients, proxy replicas, the shared store, the
control loop stepping the real control law, and a simulated upstream, on a virtual clock.

What is modelled, as the services do it (docs/limiter.md):

- Admission (the store's ``acquire``): a concurrency lease first (requests beyond the cap
  wait for a slot, first come first served, up to ``max_wait``), then GCRA at the rate in
  force with ``burst`` seconds of tolerance; a wait beyond ``max_wait`` is refused (the
  proxy answers 429 itself: "held back"). Waits follow the rate: when it changes, what
  is left of every wait is scaled by old rate / new rate.
- Reports: each replica counts ``sent``/``throttled``/``capped`` when an attempt leaves or
  waits, outcomes when answers come back, and flushes every ``flush`` seconds, at once
  after a 429. A flush that carries a 429 of a probing limit ends the probe (the push).
- Retries: a frequency 429 is retried after exponential back-off with full jitter, a 1302
  as soon as the fleet has fewer attempts in flight than when it was refused; at most
  ``max_retries``; then the 429 goes to the client.
- The control loop steps the law every tick, ``settle`` seconds after the tick ended, with
  the counts that reached the store by then (later ones are lost to it, as in the store).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from zai_proxy.limiter import controller as law
from zai_proxy.limiter.controller import Params, State, Tick
from zai_proxy.limiter.store import pushed_cap

from .upstreams import CONCURRENCY, FREQUENCY, Upstream

Latency = Callable[[random.Random], float]


@dataclass
class FleetConfig:
    """The fleet and its clients."""

    offered: Callable[[float], float]  # requests per second offered at a time (Poisson)
    latency: Latency  # seconds an accepted attempt takes
    replicas: Callable[[float], int] = lambda t: 3  # replicas serving at a time
    params: Params = field(default_factory=Params)
    refusal_latency: float = 0.005  # seconds a 429 takes to come back
    max_wait: float = 10.0
    burst: float = 0.25
    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    flush: float = 0.1
    settle: float = 0.15
    release_delay: float = 0.005
    upstream_release_lag: float = 0.004
    duration: float = 90.0
    seed: int = 0


@dataclass
class Second:
    """What happened in one second of the run (by the second it happened in)."""

    offered: int = 0
    attempts: int = 0  # attempts that reached the upstream
    accepted: int = 0  # attempts the upstream accepted (goodput)
    refused: int = 0  # upstream 429s
    held_back: int = 0  # requests the proxy refused itself
    to_client: int = 0  # upstream 429s passed to a client (retries spent)
    ok: int = 0  # requests answered ok to the client
    rate: float = 0.0  # the rate in force at the end of the second
    limit: float | None = None
    cap: int | None = None
    capacity: float = 0.0  # the upstream's capacity at the end of the second


@dataclass
class _Request:
    id: int
    replica: int
    attempts: int = 0
    below: int | None = None  # a 1302 retry waits until fewer than this are in flight
    waited: bool = False
    wait_end: float = 0.0
    waiting_rate: float = 0.0
    deadline: float = 0.0
    epoch: int = 0
    in_flight_at: int = 0
    sent_at: float = 0.0
    event: int = 0  # the id of its pending send event (rescaled waits cancel it)
    admitted: bool = False  # a 1302 retry that has stopped waiting for a slot


class Fleet:
    """One run of the model; ``run()`` returns its seconds."""

    def __init__(self, config: FleetConfig, upstream: Upstream) -> None:
        self.c = config
        self.up = upstream
        self.rng = random.Random(config.seed)
        self.now = 0.0
        self.state: State = law.initial_state(config.params, 0.0)
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cancelled: set[int] = set()
        self.tat = 0.0
        self.in_flight = 0
        self._slot_waiters: list[_Request] = []
        self._rate_waiters: dict[int, _Request] = {}
        self._ticks: dict[int, dict[str, float]] = defaultdict(dict)
        self._consumed = -1  # the last tick the control loop stepped with
        self._batches: list[dict[int, dict[str, float]]] = []
        self._flush_due: list[bool] = []
        self.seconds = [Second() for _ in range(int(config.duration) + 1)]
        self._ids = itertools.count()
        self._next_replica = 0
        self._slot_waits: defaultdict[int, list[_Request]] = defaultdict(list)

    # --- the event loop ------------------------------------------------------------------

    def at(self, time: float, action: Callable[[], None]) -> int:
        seq = next(self._seq)
        heapq.heappush(self._events, (time, seq, action))
        return seq

    def run(self) -> list[Second]:
        c = self.c
        for replica in range(32):
            self._batches.append(defaultdict(dict))
            self._flush_due.append(False)
            self.at(self.rng.uniform(0, c.flush), functools.partial(self._flush_tick, replica))
        self.at(c.params.tick_seconds + c.settle, self._control)
        self.at(self._next_arrival(0.0), self._arrive)
        self.at(1.0, self._sample)
        while self._events:
            time, seq, action = heapq.heappop(self._events)
            if time > c.duration:
                break
            if seq in self._cancelled:
                self._cancelled.discard(seq)
                continue
            self.now = time
            action()
        return self.seconds

    def _second(self) -> Second:
        return self.seconds[min(int(self.now), len(self.seconds) - 1)]

    def _sample(self) -> None:
        s = self.seconds[min(int(self.now) - 1, len(self.seconds) - 1)]
        s.rate = self.state.rate.rate
        s.limit = self.state.rate.limit
        s.cap = self.state.cap.cap
        s.capacity = self.up.capacity(self.now - 0.5, self._mean_latency())
        self.at(self.now + 1.0, self._sample)

    def _mean_latency(self) -> float:
        rng = random.Random(1)
        return sum(self.c.latency(rng) for _ in range(200)) / 200

    # --- clients -----------------------------------------------------------------------

    def _next_arrival(self, after: float) -> float:
        rate = self.c.offered(after)
        if rate <= 0:
            return after + 0.1
        return after + self.rng.expovariate(rate)

    def _arrive(self) -> None:
        self.at(self._next_arrival(self.now), self._arrive)
        if self.c.offered(self.now) <= 0:
            return
        replicas = max(1, self.c.replicas(self.now))
        self._next_replica = (self._next_replica + 1) % replicas
        request = _Request(next(self._ids), self._next_replica)
        self._second().offered += 1
        self._admit(request)

    # --- admission ---------------------------------------------------------------------

    def _cap_for(self, request: _Request) -> float:
        cap = self.state.cap.cap
        limit = math.inf if cap is None else cap
        if request.below is not None:
            limit = min(limit, request.below - 1)
        return max(1, limit)

    def _admit(self, request: _Request) -> None:
        if request.deadline == 0.0:
            request.deadline = self.now + self.c.max_wait
        if self.in_flight >= self._cap_for(request):
            self._count(request.replica, "capped")
            self._slot_waiters.append(request)
            return
        self._take_rate(request)

    def _take_rate(self, request: _Request) -> None:
        rate = self.state.rate.rate
        interval = 0.0 if math.isinf(rate) else 1.0 / rate
        tat = max(self.tat, self.now)
        wait = max(0.0, tat - self.c.burst - self.now)
        if wait > max(0.0, request.deadline - self.now):
            self._count(request.replica, "throttled")
            self._second().held_back += 1
            return
        self.tat = tat + interval
        self.in_flight += 1
        request.in_flight_at = self.in_flight
        request.epoch = self.state.cap.epoch
        if wait > 0:
            self._count(request.replica, "throttled")
            request.waited = True
            request.wait_end = self.now + wait
            request.waiting_rate = rate
            self._rate_waiters[request.id] = request
            request.event = self.at(self.now + wait, lambda: self._send(request))
        else:
            self._send(request)

    def _rate_changed(self, old: float, new: float) -> None:
        """Waits follow the rate: what is left of each is scaled by old / new."""
        if old == new:
            return
        for request in list(self._rate_waiters.values()):
            left = max(0.0, request.wait_end - self.now)
            if not math.isinf(new) and not math.isinf(request.waiting_rate):
                left = left * request.waiting_rate / new
            else:
                left = 0.0 if math.isinf(new) else left
            request.waiting_rate = new
            self._cancelled.add(request.event)
            if left > self.c.max_wait:
                # The store cut its backlog at max_wait from now: this turn is gone.
                del self._rate_waiters[request.id]
                self._release()
                self._second().held_back += 1
                continue
            request.wait_end = self.now + left
            request.event = self.at(request.wait_end, functools.partial(self._send, request))
        # The store moves its backlog the same way (acquire.lua): the last grant's send time
        # scales, at most max_wait ahead, and the TAT follows it.
        if math.isinf(new) or math.isinf(old):
            self.tat = min(self.tat, self.now)
            return
        last = self.tat - self.c.burst - 1 / old
        if last > self.now:
            last = self.now + min((last - self.now) * old / new, self.c.max_wait)
            self.tat = last + self.c.burst + 1 / new

    def _release(self, replica: int | None = None) -> None:
        self.in_flight -= 1
        self._grant_slots()
        if replica is not None and self._slot_waits[replica]:
            self._slot_freed_for(self._slot_waits[replica][0])  # one slot, one retry

    def _slot_freed_for(self, retry: _Request) -> None:
        if retry.admitted:
            return
        retry.admitted = True
        for waits in self._slot_waits.values():
            if retry in waits:
                waits.remove(retry)
        self._admit(retry)

    def _grant_slots(self) -> None:
        """Let waiters in while slots are free, first come first served (a 1302 retry
        waits for a lower count than the others, so others may pass it)."""
        kept = []
        for waiter in self._slot_waiters:
            if waiter.deadline < self.now:
                self._second().held_back += 1
            elif self.in_flight < self._cap_for(waiter):
                self._take_rate(waiter)
            else:
                kept.append(waiter)
        self._slot_waiters = kept

    # --- the upstream ------------------------------------------------------------------

    def _send(self, request: _Request) -> None:
        self._rate_waiters.pop(request.id, None)
        request.attempts += 1
        request.sent_at = self.now
        self._count(request.replica, "sent")
        second = self._second()
        second.attempts += 1
        refused = self.up.admit(self.now)
        if refused is None:
            second.accepted += 1
            latency = self.c.latency(self.rng)
            self.at(self.now + latency, lambda: self._answered(request, None))
        else:
            second.refused += 1
            self.at(self.now + self.c.refusal_latency, lambda: self._answered(request, refused))

    def _answered(self, request: _Request, refused: str | None) -> None:
        replica = request.replica
        if refused is None:
            # The upstream frees its slot about when its answer is out: a moment before or
            # after this replica sees the answer (its lease goes release_delay later).
            lag = self.rng.uniform(0.0, self.c.upstream_release_lag)
            self.at(self.now + lag, lambda: self.up.release(self.now))
            self._count(replica, "ok")
            self._count(replica, "latency_sum", self.now - request.sent_at)
            self._count(replica, "latency_count")
            if request.epoch == self.state.cap.epoch and not request.waited:
                self._extreme(replica, "ok_at", request.in_flight_at, max)
        elif refused == FREQUENCY:
            self._count(replica, "limited")
            self._flush_soon(replica)
        else:
            self._count(replica, "concurrency_limited")
            # The count at grant: exact when the attempt did not wait, an upper bound of
            # the count it went out at when it did (those ahead of it may have finished).
            self._extreme(replica, "refused_at", request.in_flight_at, min)
            self._flush_soon(replica)
        self.at(self.now + self.c.release_delay, lambda: self._release(replica))
        if refused is None:
            self._second().ok += 1
            return
        if request.attempts > self.c.max_retries:
            self._second().to_client += 1
            return
        retry = _Request(request.id, replica, request.attempts)
        retry.deadline = self.now + self.c.max_wait
        if refused == CONCURRENCY:
            # Retried when a slot frees: after the next release of an attempt of its own
            # replica (the proxy sees those), at most a second later.
            self._slot_waits[replica].append(retry)
            self.at(self.now + 1.0, lambda: self._slot_freed_for(retry))
            return
        backoff = min(self.c.backoff_max, self.c.backoff_base * 2 ** (request.attempts - 1))
        self.at(self.now + self.rng.uniform(0, backoff), lambda: self._admit(retry))

    # --- reports and the control loop --------------------------------------------------

    def _tick_of(self, time: float) -> int:
        return math.floor(time / self.c.params.tick_seconds)

    def _count(self, replica: int, name: str, value: float = 1.0) -> None:
        counts = self._batches[replica][self._tick_of(self.now)]
        counts[name] = counts.get(name, 0) + value

    def _extreme(self, replica: int, name: str, value: int, pick: Callable[..., int]) -> None:
        counts = self._batches[replica][self._tick_of(self.now)]
        counts[name] = pick(counts[name], value) if name in counts else value

    def _flush_soon(self, replica: int) -> None:
        if not self._flush_due[replica]:
            self._flush_due[replica] = True
            self.at(self.now + 0.002, lambda: self._flush(replica))

    def _flush_tick(self, replica: int) -> None:
        self._flush(replica)
        self.at(self.now + self.c.flush, lambda: self._flush_tick(replica))

    def _flush(self, replica: int) -> None:
        self._flush_due[replica] = False
        batch, self._batches[replica] = self._batches[replica], defaultdict(dict)
        limited = concurrency_limited = False
        refused_at: int | None = None
        for index, counts in batch.items():
            if "refused_at" in counts:
                n = int(counts["refused_at"])
                refused_at = n if refused_at is None else min(refused_at, n)
            held = self._ticks[index]
            for name, value in counts.items():
                if name == "ok_at":
                    held[name] = max(held.get(name, value), value)
                elif name == "refused_at":
                    held[name] = min(held.get(name, value), value)
                else:
                    held[name] = held.get(name, 0) + value
            limited = limited or counts.get("limited", 0) > 0
            concurrency_limited = concurrency_limited or counts.get("concurrency_limited", 0) > 0
        state = self.state
        if limited:
            state = law.rate_pushed(state, self.now)
        if concurrency_limited:
            c = state.cap
            pushed = pushed_cap(c.cap, c.base, refused_at, self.c.params.min_concurrency)
            if pushed is not None:
                state = law.cap_pushed(state, pushed, c.epoch + 1, self.now)
        if state is not self.state:
            self._set_state(state)

    def _control(self) -> None:
        c = self.c
        self.at(self.now + c.params.tick_seconds, self._control)
        due = self._tick_of(self.now - c.settle) - 1
        ticks = []
        for index in range(self._consumed + 1, due + 1):
            ticks.append(_tick(index * c.params.tick_seconds, self._ticks.pop(index, {})))
        self._consumed = max(self._consumed, due)
        self._set_state(law.step(self.state, ticks, self.now, c.params))

    def _set_state(self, state: State) -> None:
        old_rate, old_cap = self.state.rate.rate, self.state.cap.cap
        self.state = state
        self._rate_changed(old_rate, state.rate.rate)
        if state.cap.cap != old_cap:
            self._grant_slots()  # a raised cap lets waiters in


def _tick(start: float, counts: dict[str, float]) -> Tick:
    def whole(name: str) -> int:
        return int(counts.get(name, 0))

    ok_at, refused_at = counts.get("ok_at"), counts.get("refused_at")
    return Tick(
        start=start,
        sent=whole("sent"),
        throttled=whole("throttled"),
        ok=whole("ok"),
        limited=whole("limited"),
        concurrency_limited=whole("concurrency_limited"),
        capped=whole("capped"),
        ok_at=None if ok_at is None else int(ok_at),
        refused_at=None if refused_at is None else int(refused_at),
        latency_sum=counts.get("latency_sum", 0.0),
        latency_count=whole("latency_count"),
    )
