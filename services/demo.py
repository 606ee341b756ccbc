"""The demo's synthetic load: clients of both dialects, above the hidden limit.

It offers more than the simulated upstream accepts, so the limiter has something to learn,
spreads it 3:1 over the production and canary proxies, mixes plain and streamed OpenAI
and Anthropic requests with realistic token counts (a fifth of them offering a tool, which
the simulated model calls, and a few embeddings), and shows a progress line: what was
sent and answered, and the limiter's rate against the hidden limit. On a terminal it is
one line redrawn in place every second (progress.ProgressLine); otherwise (a pipe, a
file, CI) a plain line every PLAIN_PROGRESS_SECONDS. The demo's access log goes to a file
(up.DEMO_ACCESS_LOG), so nothing else writes a line a request to the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sys
import time
from collections import Counter

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from zai_proxy.progress import ProgressLine

# Requests per second offered: above the highest hidden limit of the demo schedule.
OFFERED_RATE = 60.0
MAX_IN_FLIGHT = 400
PROGRESS_SECONDS = 1.0
# Without a terminal a line cannot be redrawn: a plain line this often instead.
PLAIN_PROGRESS_SECONDS = 5.0
MODELS = ("glm-4.6", "glm-4.6", "glm-4.6", "glm-4.5-air")
TOOL_SHARE = 0.2
EMBEDDINGS_SHARE = 0.05
_REPORT_SCHEMA = {
    "type": "object",
    "properties": {"incident": {"type": "string"}, "severity": {"enum": ["low", "high"]}},
}
OPENAI_TOOLS = [
    {"type": "function", "function": {"name": "file_report", "parameters": _REPORT_SCHEMA}}
]
ANTHROPIC_TOOLS = [{"name": "file_report", "input_schema": _REPORT_SCHEMA}]


class DemoLoad:
    """Sends the demo's requests and shows its progress: redrawn on `line` (a terminal),
    else in plain lines on stderr."""

    def __init__(
        self,
        proxies: list[str],
        *,
        simulator: str,
        limiter: str,
        line: ProgressLine | None = None,
    ) -> None:
        self.proxies = proxies
        self.simulator = simulator
        self.limiter = limiter
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._random = random.Random(7)
        self.line = line
        self._last = ""

    async def run(self) -> None:
        """Offer load until cancelled."""
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            progress = asyncio.create_task(self._progress(session))
            pending: set[asyncio.Task[None]] = set()
            try:
                while True:
                    await self._slots.acquire()
                    task = asyncio.create_task(self._one(session))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    await asyncio.sleep(self._random.expovariate(OFFERED_RATE))
            finally:
                progress.cancel()
                for task in pending:
                    task.cancel()
                if self.line is not None:
                    self.line.end()  # leave the last figures standing
                elif self._last:
                    print(self._last, file=sys.stderr, flush=True)  # the last figures

    async def _one(self, session: aiohttp.ClientSession) -> None:
        rnd = self._random
        base = self.proxies[0] if len(self.proxies) == 1 or rnd.random() < 0.75 else self.proxies[1]
        anthropic = rnd.random() < 0.3
        stream = anthropic or rnd.random() < 0.5
        body: dict[str, object] = {
            "model": rnd.choice(MODELS),
            "stream": stream,
            "messages": [{"role": "user", "content": "Summarise the incident report."}],
        }
        if anthropic:
            body["max_tokens"] = 1024
        if rnd.random() < TOOL_SHARE:
            body["tools"] = ANTHROPIC_TOOLS if anthropic else OPENAI_TOOLS
        completion = rnd.randint(40, 900)
        headers = {
            "x-sim-prompt-tokens": str(rnd.randint(300, 6000)),
            "x-sim-completion-tokens": str(completion),
            "x-sim-cached-tokens": str(rnd.choice((0, 0, 256, 1024))),
            "x-sim-latency-ms": str(rnd.randint(40, 400)),
            "x-sim-chunks": str(max(2, completion // 40)),
            "x-sim-chunk-gap-ms": "15" if stream else "0",
        }
        path = "/v1/messages" if anthropic else "/v1/chat/completions"
        if not anthropic and rnd.random() < EMBEDDINGS_SHARE:
            path, body = "/v1/embeddings", {"model": "embedding-3", "input": ["incident"] * 8}
        self.counts["sent"] += 1
        try:
            async with session.post(base + path, json=body, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    self.counts["ok"] += 1
                elif response.headers.get("x-ratelimit-source") == "proxy":
                    self.counts["held back"] += 1
                elif response.status == 429:
                    self.counts["upstream 429"] += 1
                else:
                    self.counts["other"] += 1
        except (aiohttp.ClientError, TimeoutError):
            self.counts["failed"] += 1
        finally:
            self._slots.release()

    async def _progress(self, session: aiohttp.ClientSession) -> None:
        shown = time.monotonic()
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            rate, ceiling, hidden = await self._figures(session)
            elapsed = int(time.monotonic() - self.started)
            c = self.counts
            self._last = (
                f"demo {elapsed // 60:02d}:{elapsed % 60:02d}  sent {c['sent']:,}  ok {c['ok']:,}"
                f"  held back {c['held back']:,}  upstream 429 {c['upstream 429']:,}"
                f"  limiter {rate}  learned {ceiling}  hidden limit {hidden}"
            )
            if self.line is not None:
                self.line.show(self._last)
            elif time.monotonic() - shown >= PLAIN_PROGRESS_SECONDS:
                shown = time.monotonic()
                print(self._last, file=sys.stderr, flush=True)

    async def _figures(self, session: aiohttp.ClientSession) -> tuple[str, str, str]:
        rate = ceiling = hidden = "-"
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(f"{self.limiter}/metrics") as response:
                text = await response.text()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "limiter_rate":
                        rate = "open" if math.isinf(sample.value) else f"{sample.value:.1f}/s"
                    elif sample.name == "limiter_ceiling":
                        ceiling = f"{sample.value:.1f}/s"
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            async with session.get(f"{self.simulator}/_sim/stats") as response:
                stats = await response.json()
            hidden = f"{stats['limit']['rate']:.0f}/s"
        return rate, ceiling, hidden
