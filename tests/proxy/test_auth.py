"""Client keys: only configured keys pass, traffic is labelled by alias, /metrics can be closed."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import TEST_KEY, Scrape, ServiceProcess, scrape, start_proxy
from zai_proxy.proxy.auth import ANONYMOUS, ClientKeys, Unauthorized, parse_file, parse_inline
from zai_proxy.shared.keyfiles import Entry
from zai_proxy.simulator.process import SimulatorProcess

CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}
KEYS = "alice:alice-key-0001,bob:bob-key-000002"


def test_inline_and_file_keys_are_parsed_and_bad_entries_are_named_not_shown() -> None:
    assert parse_inline(" alice:alice-key-0001 , bob:bob-key-000002,") == {
        "alice": Entry("alice-key-0001"),
        "bob": Entry("bob-key-000002"),
    }
    text = "# team keys\nalice alice-key-0001  # laptop\n\nci ci-key-00000003\n"
    assert parse_file(text, "keys.txt") == {
        "alice": Entry("alice-key-0001"),
        "ci": Entry("ci-key-00000003"),
    }
    for bad in ("alice", "alice:short", "bad alias:abcdefghij", "a:abcdefgh1,a:abcdefgh2"):
        with pytest.raises(ValueError) as error:
            parse_inline(bad)
        assert "abcdefgh" not in str(error.value)


def test_a_request_is_matched_to_its_alias_by_either_header() -> None:
    keys = ClientKeys(parse_inline(KEYS))
    assert keys.alias_of([(b"authorization", b"Bearer alice-key-0001")]) == "alice"
    assert keys.alias_of([(b"x-api-key", b"bob-key-000002")]) == "bob"
    for headers in ([], [(b"authorization", b"Bearer nope-nope-nope")], [(b"x-api-key", b"")]):
        with pytest.raises(Unauthorized):
            keys.alias_of(headers)
    assert ClientKeys({}).alias_of([]) == ANONYMOUS


@pytest.fixture(scope="module")
def guarded(
    upstream: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text("carol carol-key-0003\n")
    env = {
        "PROXY_API_KEYS": KEYS,
        "PROXY_API_KEYS_FILE": str(keys_file),
        "METRICS_TOKEN": "metrics-secret",
    }
    with start_proxy(upstream.url, env=env) as service:
        yield service


def metrics(proxy_url: str) -> httpx.Response:
    return httpx.get(f"{proxy_url}/metrics", headers={"authorization": "Bearer metrics-secret"})


def test_requests_without_a_valid_key_get_401_and_never_reach_the_upstream(
    guarded: ServiceProcess,
    upstream: SimulatorProcess,
) -> None:
    for headers in ({}, {"authorization": "Bearer wrong-key-000"}, {"x-api-key": "nope-nope"}):
        request_id = uuid.uuid4().hex
        answer = httpx.post(f"{guarded.url}/v1/chat/completions", json=CHAT,
                            headers={**headers, "x-request-id": request_id})  # fmt: skip
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(f"{upstream.url}/_sim/requests/{request_id}").status_code == 404
    anthropic = httpx.post(f"{guarded.url}/v1/messages", json=CHAT)
    assert anthropic.status_code == 401
    assert anthropic.json()["error"]["type"] == "authentication_error"


def test_each_keys_traffic_is_labelled_by_its_alias_and_the_key_stays_here(
    guarded: ServiceProcess,
    upstream: SimulatorProcess,
) -> None:
    request_id = uuid.uuid4().hex
    sent = [
        ({"authorization": "Bearer alice-key-0001", "x-request-id": request_id}, "alice"),
        ({"x-api-key": "bob-key-000002"}, "bob"),
        ({"authorization": "Bearer carol-key-0003"}, "carol"),
    ]
    for headers, _ in sent:
        answer = httpx.post(f"{guarded.url}/v1/chat/completions", json=CHAT, headers=headers)
        assert answer.status_code == 200
    record = httpx.get(f"{upstream.url}/_sim/requests/{request_id}").json()
    authorization = [v for k, v in record["headers"] if k == "authorization"]
    assert authorization == [f"Bearer {TEST_KEY}"]
    counted = Scrape(metrics(guarded.url).text)
    for _, alias in sent:
        assert counted.value("proxy_requests_total", key=alias, status="200") == 1
    # Refused requests count under "anonymous", and none of them got through.
    assert counted.value("proxy_requests_total", key="anonymous", status="200") == 0


def test_metrics_need_the_metrics_token_when_one_is_set(guarded: ServiceProcess) -> None:
    assert httpx.get(f"{guarded.url}/metrics").status_code == 401
    assert httpx.get(f"{guarded.url}/metrics",
                     headers={"authorization": "Bearer wrong"}).status_code == 401  # fmt: skip
    assert metrics(guarded.url).status_code == 200
    assert httpx.get(f"{guarded.url}/health").status_code == 200


def test_a_bad_keys_file_is_a_clear_start_up_error(
    upstream: SimulatorProcess, tmp_path: Path
) -> None:
    env = {**__import__("os").environ, "ZAI_API_KEY": TEST_KEY,
           "PROXY_API_KEYS_FILE": str(tmp_path / "missing.txt")}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "zai_proxy", "proxy"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert "PROXY_API_KEYS_FILE" in result.stderr and "Traceback" not in result.stderr


def test_without_keys_everything_is_anonymous(upstream: SimulatorProcess) -> None:
    with start_proxy(upstream.url) as proxy:
        httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
        assert scrape(proxy.url).value("proxy_requests_total", key="anonymous") == 1
