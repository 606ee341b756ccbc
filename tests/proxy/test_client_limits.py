"""Clients through the front door (real processes: the simulator, the proxy, Redis):
budgets refuse with 429 and say which, counted per client and checked against what the
upstream served; a light client keeps its fair share of a full upstream (its cap learned by
the limiter service) against a client with four times its connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import own_prefix, scrape, start_limiter, start_proxy
from zai_proxy.simulator.process import SimulatorProcess, start_simulator

CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
CI, IDE = "sk-client-ci-0001", "sk-client-ide-002"


@pytest.fixture
def prefix(real_redis_url: str) -> Iterator[str]:
    with own_prefix(real_redis_url) as name:
        yield name


def env(redis_url: str, prefix: str, clients: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "REDIS_PREFIX": prefix, "PROXY_API_KEYS": clients}


def chat(url: str, key: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json=CHAT,
        headers={"authorization": f"Bearer {key}", **headers},
        timeout=30,
    )


def accepted(upstream: SimulatorProcess) -> int:
    return int(httpx.get(f"{upstream.url}/_sim/stats").json()["accepted"])


def refusals(url: str, client: str, reason: str) -> float:
    labels = {"client": client, "reason": reason}
    return scrape(url).value("proxy_client_refusals_total", **labels)


def test_requests_per_minute_refuse_the_next_with_its_wait_and_spare_other_clients(
    real_redis_url: str, prefix: str
) -> None:
    clients = f"ci:{CI} rpm=2,ide:{IDE}"
    with (
        start_simulator() as upstream,
        start_proxy(upstream.url, env(real_redis_url, prefix, clients)) as proxy,
    ):
        assert [chat(proxy.url, CI).status_code for _ in range(2)] == [200, 200]
        refused = chat(proxy.url, CI)
        assert refused.status_code == 429
        assert refused.headers["x-ratelimit-source"] == "proxy"
        assert refused.headers["x-proxy-error"] == "client_budget_exceeded"
        # The third of two a minute may go 30 s after the first.
        assert 25 <= int(refused.headers["retry-after"]) <= 30
        assert "requests per minute" in refused.json()["error"]["message"]
        assert CI not in refused.text
        assert chat(proxy.url, IDE).status_code == 200
        assert accepted(upstream) == 3  # what the upstream served: the refused one never left
        assert refusals(proxy.url, "ci", "client_budget_rpm") == 1


def test_tokens_per_day_refuse_once_the_day_is_spent(real_redis_url: str, prefix: str) -> None:
    with (
        start_simulator() as upstream,
        start_proxy(
            upstream.url, env(real_redis_url, prefix, f"ci:{CI} tokens_per_day=40")
        ) as proxy,
    ):
        spent = 0
        statuses = []
        for _ in range(20):
            answer = chat(proxy.url, CI)
            statuses.append(answer.status_code)
            if answer.status_code != 200:
                break
            usage = answer.json()["usage"]
            spent += usage["prompt_tokens"] + usage["completion_tokens"]
            time.sleep(0.3)  # the count reaches the store with the next flush (0.1 s)
        assert statuses[-1] == 429, statuses
        # Refused exactly once the tokens the client was served reached the budget.
        assert spent >= 40
        assert spent - usage["prompt_tokens"] - usage["completion_tokens"] < 40
        assert accepted(upstream) == len(statuses) - 1
        assert refusals(proxy.url, "ci", "client_budget_tokens_per_day") == 1


def test_concurrent_requests_refuse_the_one_over(real_redis_url: str, prefix: str) -> None:
    with (
        start_simulator() as upstream,
        start_proxy(upstream.url, env(real_redis_url, prefix, f"ci:{CI} concurrent=1")) as proxy,
    ):

        async def both() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:

                async def one(delay: float) -> int:
                    await asyncio.sleep(delay)
                    answer = await client.post(
                        f"{proxy.url}/v1/chat/completions",
                        json=CHAT,
                        headers={"authorization": f"Bearer {CI}", "x-sim-latency-ms": "1500"},
                    )
                    return answer.status_code

                return list(await asyncio.gather(one(0.0), one(0.5)))

        assert asyncio.run(both()) == [200, 429]
        assert chat(proxy.url, CI).status_code == 200  # the first one's slot came back
        assert refusals(proxy.url, "ci", "client_budget_concurrent") == 1


def test_a_light_client_keeps_its_share_of_a_full_upstream(
    real_redis_url: str, prefix: str
) -> None:
    clients = f"ci:{CI},ide:{IDE}"
    shared = env(real_redis_url, prefix, clients)
    with (
        start_simulator("--max-concurrency", "2") as upstream,
        start_limiter(shared),
        start_proxy(upstream.url, shared) as proxy,
    ):
        done: dict[str, list[float]] = {"ci": [], "ide": []}

        async def load(seconds: float) -> None:
            start = time.monotonic()
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=20)) as c:

                async def loop(client: str, key: str) -> None:
                    while time.monotonic() - start < seconds:
                        answer = await c.post(
                            f"{proxy.url}/v1/chat/completions",
                            json=CHAT,
                            headers={"authorization": f"Bearer {key}", "x-sim-latency-ms": "200"},
                        )
                        if answer.status_code == 200:
                            done[client].append(time.monotonic() - start)

                heavy = [loop("ci", CI) for _ in range(8)]
                light = [loop("ide", IDE) for _ in range(2)]
                await asyncio.gather(*heavy, *light)

        asyncio.run(load(8.0))
    # The last 5 s (the cap is learned in the first): first come, first served would give
    # the light client 2 of 10 waiting requests' turns, 20%; its fair share is half.
    served = {client: sum(1 for at in ends if at >= 3.0) for client, ends in done.items()}
    share = served["ide"] / (served["ide"] + served["ci"])
    assert 0.4 <= share <= 0.6, served
    # Nearly the whole upstream in use: 2 at a time for 0.2 s is 10 requests a second.
    assert served["ide"] + served["ci"] >= 0.8 * 10 * 5, served
