"""Simulator processes with hidden limits, started through the reusable helper."""

import asyncio
import contextlib

import httpx
import pytest

from zai_proxy.simulator.process import start_simulator

CHAT = "/v1/chat/completions"


def test_a_process_announces_its_url_and_stops() -> None:
    sim = start_simulator()
    assert sim.url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{sim.url}/v1/models").status_code == 200
    sim.stop()
    assert sim.process.returncode is not None


def test_beyond_the_hidden_rate_requests_get_429_code_1305() -> None:
    with start_simulator("--rate-limit", "5") as sim, httpx.Client(base_url=sim.url) as client:
        responses = [client.post(CHAT, json={}) for _ in range(15)]
        stats = client.get("/_sim/stats").json()
    statuses = [response.status_code for response in responses]
    rejected = [response for response in responses if response.status_code == 429]
    assert 5 <= statuses.count(200) <= 7  # the one-second burst, plus what refills meanwhile
    assert rejected
    assert all(response.json()["error"]["code"] == "1305" for response in rejected)
    assert stats["limit"]["rate"] == 5
    assert stats["rejected_429"] == {"1305": len(rejected)}
    assert stats["accepted"] == statuses.count(200)


async def test_beyond_the_hidden_concurrency_requests_get_429_code_1302() -> None:
    with start_simulator("--max-concurrency", "2") as sim:
        async with httpx.AsyncClient(base_url=sim.url) as client:
            slow = {"x-sim-latency-ms": "300"}
            responses = await asyncio.gather(
                *(client.post(CHAT, json={}, headers=slow) for _ in range(3))
            )
            codes = sorted(response.status_code for response in responses)
            assert codes == [200, 200, 429]
            rejected = next(r for r in responses if r.status_code == 429)
            assert rejected.json()["error"]["code"] == "1302"

            # A client that gives up frees its slot: the simulator stops answering it.
            for _ in range(2):
                with contextlib.suppress(httpx.TimeoutException):
                    await client.post(
                        CHAT, json={}, headers={"x-sim-latency-ms": "5000"}, timeout=0.2
                    )
            await asyncio.sleep(0.1)
            stats = (await client.get("/_sim/stats")).json()
            assert stats["in_flight"] == 0
            assert stats["max_in_flight"] == 2
            assert (await client.post(CHAT, json={})).status_code == 200


def test_the_command_line_sets_the_schedule_and_the_concurrency_cap() -> None:
    with start_simulator("--schedule", "3@0,50@100", "--max-concurrency", "4") as sim:
        stats = httpx.get(f"{sim.url}/_sim/stats").json()
    assert stats["limit"] == {"rate": 3, "max_concurrency": 4}


def test_a_bad_command_line_fails_to_start() -> None:
    with pytest.raises(RuntimeError, match="exited"):
        start_simulator("--schedule", "fast")
