"""The offered load: an open-loop client at a fixed request rate, spread over the replicas.

Arrivals are evenly spaced at ``rate`` per second and go round-robin to the replicas; each
is one non-streamed chat completion with its own X-Request-Id. At most ``concurrency``
requests are open at once: an arrival beyond that is not sent and is counted as shed by
the client (the run reports the count; a well-sized run sheds none).

Every answer becomes one ``Record``. A 429 is told apart by its ``x-ratelimit-source``
header: ``proxy`` means the proxy's limiter held the request back (it never reached the
upstream); a 429 without it is an upstream 429 that the proxy passed through. For those,
the simulator is asked how many attempts carried that request id, which shows whether
the proxy still had retries left when it gave up.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import orjson

BODY = orjson.dumps(
    {"model": "glm-4.6", "messages": [{"role": "user", "content": "Say hello."}], "stream": False}
)
STREAM_BODY = orjson.dumps(
    {"model": "glm-4.6", "messages": [{"role": "user", "content": "Say hello."}], "stream": True}
)
CLIENT_TIMEOUT_S = 180.0
STREAM_CHUNKS = 5
# A stream of STREAM_CHUNKS content chunks is that many events plus the finish chunk, the
# usage chunk the proxy asks for and [DONE]; the simulator's gap goes between two events.
STREAM_GAPS = STREAM_CHUNKS + 2


@dataclass(frozen=True, slots=True)
class Record:
    """One client request: when it left and came back (monotonic s), where, what came back."""

    sent: float
    done: float
    replica: int
    status: int  # 0: the client's own error (connection, timeout)
    source: str  # "ok", "proxy" (held back), "upstream" (429 passed through), "error"
    attempts: int = 0  # upstream 429s only: attempts the simulator saw (-1: it forgot the id)


@dataclass
class LoadResult:
    """Everything the client saw."""

    records: list[Record] = field(default_factory=list)
    shed: list[float] = field(default_factory=list)  # arrival times not sent (bound reached)


class LoadClient:
    """Offers ``rate`` requests per second to ``urls`` until ``stop_at`` (monotonic s)."""

    def __init__(
        self,
        urls: list[str],
        sim_url: str,
        rate: float,
        concurrency: int,
        latency_ms: int,
        *,
        stream: bool = False,
    ) -> None:
        self.urls = urls
        self.sim_url = sim_url
        self.rate = rate
        self.concurrency = concurrency
        self.headers = {"content-type": "application/json", "authorization": "Bearer client"}
        self.body = STREAM_BODY if stream else BODY
        if latency_ms and stream:
            # A stream holds its upstream slot from the first byte to the last: the answer
            # time is spread over the gaps between its events (measured: 7 gaps of 143 ms
            # take 1.0 s; 5 chunks at latency / 5 took 1.4 s, a capacity 29% below the
            # one the targets were computed for).
            self.headers["x-sim-chunks"] = str(STREAM_CHUNKS)
            self.headers["x-sim-chunk-gap-ms"] = str(round(latency_ms / STREAM_GAPS))
        elif latency_ms:
            self.headers["x-sim-latency-ms"] = str(latency_ms)
        self.result = LoadResult()
        self.open = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop_at: float) -> LoadResult:
        """Offer the load until ``stop_at``, then wait for every open request to end."""
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            start = time.monotonic()
            replicas = itertools.cycle(range(len(self.urls)))
            for n in itertools.count():
                due = start + n / self.rate
                if due >= stop_at:
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                replica = next(replicas)
                if self.open >= self.concurrency:
                    self.result.shed.append(due)
                    continue
                self.open += 1
                task = asyncio.create_task(self._one(session, replica))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.result

    async def _one(self, session: aiohttp.ClientSession, replica: int) -> None:
        request_id = uuid.uuid4().hex
        headers = {**self.headers, "x-request-id": request_id}
        sent = done = time.monotonic()
        status, source, attempts = 0, "error", 0
        try:
            async with session.post(
                self.urls[replica] + "/v1/chat/completions", data=self.body, headers=headers
            ) as response:
                await response.read()
                status = response.status
                if status < 300:
                    source = "ok"
                elif status == 429:
                    held = response.headers.get("x-ratelimit-source") == "proxy"
                    source = "proxy" if held else "upstream"
            done = time.monotonic()
            if source == "upstream":
                attempts = await self._attempts(session, request_id)
        except (aiohttp.ClientError, TimeoutError):
            done = time.monotonic()
        finally:
            self.open -= 1
        self.result.records.append(Record(sent, done, replica, status, source, attempts))

    async def _attempts(self, session: aiohttp.ClientSession, request_id: str) -> int:
        # The simulator remembers the last 1,000 request ids: ask at once.
        async with session.get(f"{self.sim_url}/_sim/requests/{request_id}") as response:
            if response.status != 200:
                return -1
            return int(orjson.loads(await response.read()).get("seen", 0))
