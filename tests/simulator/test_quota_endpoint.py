"""The simulated quota: the endpoint's answer, spending by accepted requests, 1308/1310."""

import time
from collections.abc import Iterator

import httpx
import pytest

from zai_proxy.simulator.app import build_app
from zai_proxy.simulator.config import SimulatorConfig
from zai_proxy.simulator.process import start_simulator
from zai_proxy.simulator.quota import parse_quota_spec, window_shape

QUOTA = "/api/monitor/usage/quota/limit"
CHAT = "/api/paas/v4/chat/completions"
FIVE_HOURS = 5 * 3600
WEEK = 7 * 24 * 3600


@pytest.fixture(scope="module")
def quota_client() -> Iterator[httpx.Client]:
    """A client of a simulator whose quota is 3 requests per 5 h and 5 per week."""
    with (
        start_simulator("--quota-requests", "5h=3,weekly=5") as sim,
        httpx.Client(base_url=sim.url, timeout=10.0) as http,
    ):
        yield http


def _amounts(window: dict[str, int]) -> tuple[int, int, int, int]:
    """(capacity, used, remaining, percentage) as Z.ai names them."""
    return window["usage"], window["currentValue"], window["remaining"], window["percentage"]


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("5h=1000,weekly=20000", (("5h", 1000), ("weekly", 20000))),
        (" 7d = 10 , ", (("7d", 10),)),
        ("", ()),
    ],
)
def test_a_quota_spec_parses_into_windows(text: str, spec: tuple[tuple[str, int], ...]) -> None:
    assert parse_quota_spec(text) == spec


@pytest.mark.parametrize(
    "text", ["5h", "5h=many", "5h=0", "90m=10", "0h=1", "5h=1,5h=2", "weekly=-1"]
)
def test_an_unusable_quota_spec_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quota_spec(text)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("5h", (3, 5, FIVE_HOURS)),
        ("weekly", (6, 1, WEEK)),
        ("2w", (6, 2, 2 * WEEK)),
        ("daily", (4, 1, 86400)),
    ],
)
def test_window_names_map_onto_zai_units(name: str, shape: tuple[int, int, float]) -> None:
    assert window_shape(name) == shape


def test_the_answer_is_wrapped_like_zai_with_both_windows(quota_client: httpx.Client) -> None:
    quota_client.post("/_sim/reset")
    response = quota_client.get(QUOTA)
    body = response.json()
    assert response.status_code == 200
    assert body["code"] == 200 and body["success"] is True and body["msg"]
    five, weekly = body["data"]["limits"]
    assert five["type"] == weekly["type"] == "TOKENS_LIMIT"
    assert (five["unit"], five["number"], weekly["unit"], weekly["number"]) == (3, 5, 6, 1)
    assert _amounts(five) == (3, 0, 3, 0)
    assert _amounts(weekly) == (5, 0, 5, 0)
    assert five["nextResetTime"] / 1000 == pytest.approx(time.time() + FIVE_HOURS, abs=60)
    gap_ms = weekly["nextResetTime"] - five["nextResetTime"]
    assert gap_ms == pytest.approx((WEEK - FIVE_HOURS) * 1000, abs=1)


def test_accepted_requests_spend_the_quota_until_1308(quota_client: httpx.Client) -> None:
    quota_client.post("/_sim/reset")
    for _ in range(2):
        assert quota_client.post(CHAT, json={}).status_code == 200
    five, weekly = quota_client.get(QUOTA).json()["data"]["limits"]
    assert _amounts(five) == (3, 2, 1, 66)
    assert _amounts(weekly) == (5, 2, 3, 40)
    assert quota_client.post("/v1/messages", json={}).status_code == 200
    refused = quota_client.post(CHAT, json={})
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "1308"
    reset = time.strftime("%Y-%m-%d %H:%M", time.gmtime(five["nextResetTime"] / 1000 + 8 * 3600))
    assert f"will reset at {reset}" in error["message"]
    five, _ = quota_client.get(QUOTA).json()["data"]["limits"]
    assert _amounts(five) == (3, 3, 0, 100)
    stats = quota_client.get("/_sim/stats").json()
    assert stats["accepted"] == 3 and stats["rejected_429"] == {"1308": 1}


def test_a_spent_weekly_window_answers_1310() -> None:
    with start_simulator("--quota-requests", "5h=10,weekly=1") as sim:
        assert httpx.post(sim.url + CHAT, json={}).status_code == 200
        refused = httpx.post(sim.url + CHAT, json={})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "1310"
    assert "weekly window" in refused.json()["error"]["message"]


def test_without_a_quota_the_answer_has_no_windows(client: httpx.Client) -> None:
    body = client.get(QUOTA).json()
    assert body["success"] is True and body["data"]["limits"] == []


async def test_a_window_starts_over_at_its_reset_time() -> None:
    now = [100.0]
    app = build_app(SimulatorConfig(quota_requests=(("5h", 1),), clock=lambda: now[0]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        assert (await client.post(CHAT, json={})).status_code == 200
        assert (await client.post(CHAT, json={})).status_code == 429
        (before,) = (await client.get(QUOTA)).json()["data"]["limits"]
        now[0] += FIVE_HOURS
        (after,) = (await client.get(QUOTA)).json()["data"]["limits"]
        assert _amounts(after) == (1, 0, 1, 0)
        gap_ms = after["nextResetTime"] - before["nextResetTime"]
        assert gap_ms == pytest.approx(FIVE_HOURS * 1000, abs=1)
        assert (await client.post(CHAT, json={})).status_code == 200
