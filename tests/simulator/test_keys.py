"""Upstream keys with hidden limits of their own: a quota, a cap or a refusal per key."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from zai_proxy.simulator.config import parse_keys
from zai_proxy.simulator.process import start_simulator

CHAT = "/api/paas/v4/chat/completions"
BODY = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}
KEYS = {
    "alpha": {"key": "sk-alpha-0001", "quota_requests": "5h=2"},
    "beta": {"key": "sk-beta-00002", "max_concurrency": 1},
    "gamma": {"key": "sk-gamma-0003", "refuse_code": 1113},
}


@pytest.fixture(scope="module")
def keyed() -> Iterator[httpx.Client]:
    with (
        start_simulator("--keys", json.dumps(KEYS)) as sim,
        httpx.Client(base_url=sim.url, timeout=10.0) as http,
    ):
        yield http


def chat(client: httpx.Client, key: str | None, **headers: str) -> httpx.Response:
    auth = {} if key is None else {"authorization": f"Bearer {key}"}
    return client.post(CHAT, json=BODY, headers={**auth, **headers})


def test_each_key_meets_its_own_limits_and_other_keys_meet_none(keyed: httpx.Client) -> None:
    assert [chat(keyed, "sk-alpha-0001").status_code for _ in range(3)] == [200, 200, 429]
    spent = chat(keyed, "sk-alpha-0001").json()["error"]
    assert spent["code"] == "1308" and "will reset at" in spent["message"]
    # The other keys are untouched by alpha's quota; an unlisted key has no limit at all.
    assert chat(keyed, "sk-beta-00002").status_code == 200
    assert chat(keyed, None).status_code == 200
    assert chat(keyed, "sk-unlisted-9").status_code == 200
    refused = keyed.post(CHAT, json=BODY, headers={"x-api-key": "sk-gamma-0003"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "1113")

    stats = keyed.get("/_sim/stats").json()
    assert stats["keys"]["alpha"]["accepted"] == 2
    assert stats["keys"]["alpha"]["rejected_429"] == {"1308": 2}
    assert stats["keys"]["gamma"]["rejected_429"] == {"1113": 1}
    assert stats["keys"]["beta"]["limit"]["max_concurrency"] == 1
    assert stats["accepted"] == 5  # every key's answers, and the unlisted ones


def test_a_key_s_concurrency_cap_is_its_own(keyed: httpx.Client) -> None:
    slow = {"x-sim-latency-ms": "600"}
    with (
        httpx.Client(base_url=str(keyed.base_url), timeout=10.0) as other,
        concurrent.futures.ThreadPoolExecutor(3) as pool,
    ):
        first = pool.submit(chat, keyed, "sk-beta-00002", **slow)
        unlisted = pool.submit(chat, other, "sk-unlisted-9", **slow)
        time.sleep(0.2)
        second = chat(keyed, "sk-beta-00002")
    assert first.result().status_code == 200 and unlisted.result().status_code == 200
    assert (second.status_code, second.json()["error"]["code"]) == (429, "1302")


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1]",
        '{"a": {"key": "k", "colour": 1}}',
        '{"a": {"key": "k", "max_concurrency": 0}}',
        '{"a": {"key": "k"}, "b": {"key": "k"}}',
        '{"a": {"key": "k", "quota_requests": "5h"}}',
    ],
)
def test_bad_key_limits_are_refused_with_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_keys(text)
